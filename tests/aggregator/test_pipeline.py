"""The aggregator end to end on Anvil: honest rounds, quorum, restart safety."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.aggregator.conftest import Federation
from tests.chain.conftest import advance_time
from tests.conftest import Roles
from ztfm_chain.aggregator import daemon
from ztfm_chain.aggregator.reasons import Reason
from ztfm_chain.chain.models import RoundState, model_info, round_info
from ztfm_chain.fl.training import evaluate
from ztfm_chain.updates import decode_model


def run_until_done(federation: Federation, round: int, **overrides: object) -> None:
    aggregator = federation.aggregator(**overrides)
    for _ in range(10):
        aggregator.step()
        if aggregator.journal.phase(federation.model_id, round) == "done":
            return
    raise AssertionError(
        f"round {round} ended in phase {aggregator.journal.phase(federation.model_id, round)}"
    )


def test_honest_round_finalizes_new_model(federation: Federation) -> None:
    round = federation.open_round()
    for device in federation.devices:
        device.run_round(federation.model_id)
    run_until_done(federation, round, close_after=len(federation.devices))
    system = federation.system
    info = round_info(system, federation.model_id, round)
    assert info.state is RoundState.FINALIZED
    assert info.accepted_count == len(federation.devices)
    model = model_info(system, federation.model_id)
    data = federation.store.get(model.global_model_cid)
    assert hashlib.sha256(data).digest() == model.global_model_hash
    report_cid = federation.aggregators[0].journal.result(federation.model_id, round)
    assert report_cid is not None
    report = json.loads(federation.store.get(report_cid["report_cid"]))
    assert (
        hashlib.sha256(federation.store.get(report_cid["report_cid"])).digest()
        == info.report_hash
    )
    assert {row["reason"] for row in report["commitments"]} == {"ACCEPTED"}
    assert len(report["accepted"]) == len(federation.devices)
    scores = system.trust.functions.scoresOf(
        [d.device for d in federation.devices]
    ).call()
    # Accepted updates score at least 5000, so trust can only rise from the start.
    assert all(score >= 5000 for score in scores), scores
    assert any(score > 5000 for score in scores), scores
    events = system.trust.events.TrustScoreChanged().get_logs(from_block=0)
    assert {e["args"]["device"] for e in events} >= {
        d.device for d in federation.devices
    }
    assert {e["args"]["reason"] for e in events} == {int(Reason.ACCEPTED)}


def test_training_rounds_improve_accuracy(federation: Federation) -> None:
    digits = federation.digits
    system = federation.system
    accuracies = []
    for _ in range(3):
        round = federation.open_round()
        for device in federation.devices:
            device.run_round(federation.model_id)
        run_until_done(federation, round, close_after=len(federation.devices))
        model = model_info(system, federation.model_id)
        data = federation.store.get(model.global_model_cid)
        schema_source = federation.aggregators[-1]._bases[federation.model_id]
        state = decode_model(data, schema_source.schema, max_size=len(data))
        accuracies.append(evaluate(state, digits.test_x, digits.test_y))
    # One local epoch on six non-IID devices learns slowly but steadily.
    assert accuracies[-1] > 0.3, accuracies
    assert accuracies[-1] > accuracies[0] + 0.1, accuracies


def test_round_below_quorum_fails_and_keeps_model(federation: Federation) -> None:
    round = federation.open_round()
    for device in federation.devices[:2]:
        device.run_round(federation.model_id)
    advance_time(federation.system, 3601)
    run_until_done(federation, round)
    system = federation.system
    assert round_info(system, federation.model_id, round).state is RoundState.FAILED
    model = model_info(system, federation.model_id)
    assert model.global_model_hash == model.base_model_hash


def test_restart_does_not_count_twice(federation: Federation) -> None:
    round = federation.open_round()
    for device in federation.devices:
        device.run_round(federation.model_id)
    first = federation.aggregator(close_after=len(federation.devices))
    first.sync_events()
    first.sync_events()
    rows = first.journal.commitments(federation.model_id, round)
    assert len(rows) == len(federation.devices)
    first.journal.close()
    federation.aggregators.clear()
    run_until_done(federation, round, close_after=len(federation.devices))
    rows = federation.aggregators[-1].journal.commitments(federation.model_id, round)
    assert len(rows) == len(federation.devices)
    assert {r.status for r in rows} == {"accepted"}
    assert all(r.reason == Reason.ACCEPTED.name for r in rows)
    assert Roles.aggregator.address


def test_round_closes_when_all_eligible_committed(
    federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slices of two devices make the six-device federation read devicesOf in three
    # calls, as thousands of devices would.
    monkeypatch.setattr(daemon, "DEVICE_SLICE", 2)
    system = federation.system
    system.client.transact(
        system.devices.functions.suspend(federation.devices[5].device), Roles.registrar
    )
    round = federation.open_round()
    aggregator = federation.aggregator(close_when_all_committed=True)
    for device in federation.devices[:4]:
        device.run_round(federation.model_id)
    aggregator.step()
    assert round_info(system, federation.model_id, round).state is RoundState.OPEN
    # The suspended device cannot commit, so the fifth commitment completes the set.
    federation.devices[4].run_round(federation.model_id)
    for _ in range(5):
        aggregator.step()
    info = round_info(system, federation.model_id, round)
    assert info.state is RoundState.FINALIZED
    assert info.accepted_count == 5
