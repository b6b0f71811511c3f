"""TrustRegistry: batched score writes by model aggregators only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3.logs import DISCARD

from tests.chain.conftest import new_key, reverts
from ztfm_chain.chain.deploy import System


def set_scores(
    system: System,
    caller: LocalAccount,
    model_id: int,
    devices: list[str],
    scores: list[int],
    reasons: list[int] | None = None,
) -> Any:
    return system.client.transact(
        system.trust.functions.setScores(
            model_id, devices, scores, reasons or [0] * len(devices)
        ),
        caller,
    )


def test_unscored_device_has_initial_score(system: System) -> None:
    assert system.trust.functions.scoreOf(new_key().address).call() == 5000
    assert system.trust.functions.initialScore().call() == 5000


def test_set_scores_batch_emits_per_change(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    model: Callable[..., int],
) -> None:
    model_id = model()
    devices = [enrolled().address for _ in range(3)]
    receipt = set_scores(
        system, roles.aggregator, model_id, devices, [7000, 5000, 100], [1, 2, 3]
    )
    events = system.trust.events.TrustScoreChanged().process_receipt(
        receipt, errors=DISCARD
    )
    # The second device stays at the initial 5000 but is written for the first time.
    assert [e["args"]["device"] for e in events] == devices
    assert [e["args"]["oldScore"] for e in events] == [5000, 5000, 5000]
    assert [e["args"]["newScore"] for e in events] == [7000, 5000, 100]
    assert [e["args"]["reason"] for e in events] == [1, 2, 3]
    assert all(e["args"]["aggregator"] == roles.aggregator.address for e in events)
    assert system.trust.functions.scoresOf(devices).call() == [7000, 5000, 100]
    value, updated_at, updates = system.trust.functions.scoreRecordOf(devices[0]).call()
    assert (value, updates) == (7000, 1)
    assert updated_at > 0


def test_unchanged_score_emits_nothing(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    model: Callable[..., int],
) -> None:
    model_id = model()
    device = enrolled().address
    set_scores(system, roles.aggregator, model_id, [device], [6000])
    receipt = set_scores(system, roles.aggregator, model_id, [device], [6000])
    assert system.trust.events.TrustScoreChanged().process_receipt(receipt) == ()


@pytest.mark.parametrize(
    "caller_name", ["admin", "manager", "registrar", "aggregator2", "outsider"]
)
def test_set_scores_by_non_aggregator_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    model: Callable[..., int],
    caller_name: str,
) -> None:
    model_id = model()
    caller = getattr(roles, caller_name)
    with reverts("NotModelAggregator", modelId=model_id, account=caller.address):
        set_scores(system, caller, model_id, [enrolled().address], [1])


def test_set_scores_device_outside_model_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    model: Callable[..., int],
) -> None:
    model_id = model(segments=[1])
    outsider = enrolled(segment=2).address
    with reverts("DeviceNotInModel", modelId=model_id, device=outsider):
        set_scores(system, roles.aggregator, model_id, [outsider], [1])


def test_set_scores_unenrolled_device_rejected(
    system: System, roles: Any, model: Callable[..., int]
) -> None:
    model_id = model()
    stranger = new_key().address
    with reverts("DeviceNotInModel", modelId=model_id, device=stranger):
        set_scores(system, roles.aggregator, model_id, [stranger], [1])


def test_set_scores_out_of_range_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    model: Callable[..., int],
) -> None:
    model_id = model()
    device = enrolled().address
    with reverts("ScoreOutOfRange", device=device, score=10_001):
        set_scores(system, roles.aggregator, model_id, [device], [10_001])


def test_set_scores_length_mismatch_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    model: Callable[..., int],
) -> None:
    model_id = model()
    device = enrolled().address
    with reverts("BatchLengthMismatch", devices=1, scores=2, reasons=1):
        system.client.transact(
            system.trust.functions.setScores(model_id, [device], [1, 2], [0]),
            roles.aggregator,
        )


def test_bind_model_registry_only_once(system: System, roles: Any) -> None:
    bound = system.trust.functions.modelRegistry().call()
    assert bound == system.deployment.model_registry
    with reverts("ModelRegistryBinding", current=bound):
        system.client.transact(
            system.trust.functions.bindModelRegistry(roles.outsider.address),
            roles.admin,
        )


def test_bind_model_registry_by_non_admin_rejected(system: System, roles: Any) -> None:
    with reverts("AccessControlUnauthorizedAccount", account=roles.aggregator.address):
        system.client.transact(
            system.trust.functions.bindModelRegistry(roles.outsider.address),
            roles.aggregator,
        )
