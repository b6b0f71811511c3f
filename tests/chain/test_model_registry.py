"""ModelRegistry: models, rounds, commitments and finalization."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3.logs import DISCARD

from tests.chain.conftest import (
    BASE_CID,
    BASE_HASH,
    UPDATE_CID,
    advance_time,
    commitment_for,
    new_key,
    reverts,
)
from ztfm_chain.chain.deploy import System
from ztfm_chain.chain.models import (
    ModelParams,
    RoundState,
    close_round,
    create_model,
    finalize_round,
    model_info,
    open_round,
    round_info,
)
from ztfm_chain.identity import eip712
from ztfm_chain.identity.commitments import sign_commitment, submit

NEW_HASH = hashlib.sha256(b"global model 1").digest()
DIGEST = hashlib.sha256(b"accepted set").digest()
REPORT_HASH = hashlib.sha256(b"report").digest()


def finalize(system: System, roles: Any, model_id: int, round: int, count: int) -> Any:
    return finalize_round(
        system,
        roles.aggregator,
        model_id,
        round,
        new_model_hash=NEW_HASH,
        new_model_cid="bafy-global-1",
        accepted_digest=DIGEST,
        accepted_count=count,
        report_hash=REPORT_HASH,
        report_cid="bafy-report-1",
    )


# --- models ------------------------------------------------------------------------------


def test_create_model_records_everything(system: System, roles: Any) -> None:
    params = ModelParams(min_trust=3000, quorum=5, round_duration=120)
    model_id = create_model(
        system,
        roles.manager,
        base_model_hash=BASE_HASH,
        base_model_cid=BASE_CID,
        params=params,
        segments=[1, 2],
        aggregators=[roles.aggregator.address],
    )
    assert model_id == 1
    info = model_info(system, model_id)
    assert info.owner == roles.manager.address
    assert info.min_trust == 3000
    assert info.quorum == 5
    assert info.base_model_hash == BASE_HASH
    assert info.global_model_hash == BASE_HASH
    assert info.global_model_cid == BASE_CID
    assert info.current_round == 0
    assert system.models.functions.isSegmentAllowed(model_id, 2).call()
    assert not system.models.functions.isSegmentAllowed(model_id, 3).call()
    assert system.models.functions.isAggregator(
        model_id, roles.aggregator.address
    ).call()


@pytest.mark.parametrize(
    "caller_name", ["admin", "registrar", "aggregator", "outsider"]
)
def test_create_model_without_manager_role_rejected(
    system: System, roles: Any, caller_name: str
) -> None:
    caller = getattr(roles, caller_name)
    with reverts("AccessControlUnauthorizedAccount", account=caller.address):
        create_model(
            system,
            caller,
            base_model_hash=BASE_HASH,
            base_model_cid=BASE_CID,
            params=ModelParams(),
            segments=[1],
            aggregators=[],
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_trust", 10_001),
        ("quorum", 0),
        ("round_duration", 0),
        ("max_update_bytes", 0),
        ("max_sample_count", 0),
    ],
)
def test_create_model_bad_param_rejected(
    system: System, roles: Any, field: str, value: int
) -> None:
    params = ModelParams(**{field: value})
    solidity_name = {
        "min_trust": "minTrust",
        "quorum": "quorum",
        "round_duration": "roundDuration",
        "max_update_bytes": "maxUpdateBytes",
        "max_sample_count": "maxSampleCount",
    }[field]
    with reverts("ModelParamInvalid", name=solidity_name, value=value):
        create_model(
            system,
            roles.manager,
            base_model_hash=BASE_HASH,
            base_model_cid=BASE_CID,
            params=params,
            segments=[1],
            aggregators=[],
        )


def test_aggregator_without_role_rejected(system: System, roles: Any) -> None:
    with reverts("AccountNotAggregator", account=roles.outsider.address):
        create_model(
            system,
            roles.manager,
            base_model_hash=BASE_HASH,
            base_model_cid=BASE_CID,
            params=ModelParams(),
            segments=[1],
            aggregators=[roles.outsider.address],
        )


def test_owner_changes_params_segments_aggregators(
    system: System, roles: Any, model: Callable[..., int]
) -> None:
    model_id = model()
    tx = system.client.transact
    receipt = tx(
        system.models.functions.setModelParams(
            model_id, ModelParams(quorum=9).as_tuple()
        ),
        roles.manager,
    )
    (event,) = system.models.events.ModelParamsChanged().process_receipt(
        receipt, errors=DISCARD
    )
    assert event["args"]["params"]["quorum"] == 9
    receipt = tx(system.models.functions.setSegment(model_id, 5, True), roles.manager)
    (event,) = system.models.events.ModelSegmentChanged().process_receipt(
        receipt, errors=DISCARD
    )
    assert (event["args"]["segment"], event["args"]["allowed"]) == (5, True)
    receipt = tx(
        system.models.functions.setAggregator(
            model_id, roles.aggregator.address, False
        ),
        roles.manager,
    )
    (event,) = system.models.events.ModelAggregatorChanged().process_receipt(
        receipt, errors=DISCARD
    )
    assert event["args"]["enabled"] is False
    assert model_info(system, model_id).quorum == 9


@pytest.mark.parametrize(
    ("setter", "args"),
    [
        ("setModelParams", (ModelParams().as_tuple(),)),
        ("setSegment", (4, True)),
        ("setAggregator", ("0x" + "11" * 20, False)),
    ],
    ids=["params", "segment", "aggregator"],
)
def test_model_setters_by_non_owner_rejected(
    system: System,
    roles: Any,
    model: Callable[..., int],
    setter: str,
    args: tuple[Any, ...],
) -> None:
    model_id = model()
    fn = getattr(system.models.functions, setter)(model_id, *args)
    with reverts("NotModelOwner", modelId=model_id, account=roles.aggregator.address):
        system.client.transact(fn, roles.aggregator)


def test_unknown_model_rejected(system: System, roles: Any) -> None:
    with reverts("ModelNotFound", modelId=99):
        open_round(system, roles.manager, 99)


# --- rounds ------------------------------------------------------------------------------


def test_open_round_uses_global_model(
    system: System, roles: Any, model: Callable[..., int]
) -> None:
    model_id = model(round_duration=30)
    receipt = system.client.transact(
        system.models.functions.openRound(model_id), roles.aggregator
    )
    (event,) = system.models.events.RoundOpened().process_receipt(
        receipt, errors=DISCARD
    )
    assert event["args"]["round"] == 1
    assert event["args"]["baseModelHash"] == BASE_HASH
    info = round_info(system, model_id, 1)
    assert info.state is RoundState.OPEN
    assert info.deadline == info.opened_at + 30


def test_open_round_by_outsider_rejected(
    system: System, roles: Any, model: Callable[..., int]
) -> None:
    model_id = model()
    with reverts("NotModelOperator", modelId=model_id, account=roles.outsider.address):
        open_round(system, roles.outsider, model_id)


def test_open_round_while_previous_open_rejected(
    system: System, roles: Any, open_model: Callable[..., tuple[int, int]]
) -> None:
    model_id, round = open_model()
    with reverts("RoundStateInvalid", modelId=model_id, round=round, state=1):
        open_round(system, roles.manager, model_id)


def test_finalize_round_updates_global_model(
    system: System,
    roles: Any,
    open_model: Callable[..., tuple[int, int]],
) -> None:
    model_id, round = open_model(quorum=1)
    close_round(system, roles.aggregator, model_id, round)
    receipt = finalize(system, roles, model_id, round, 1)
    (event,) = system.models.events.RoundFinalized().process_receipt(
        receipt, errors=DISCARD
    )
    assert event["args"]["newModelHash"] == NEW_HASH
    assert event["args"]["newModelCid"] == "bafy-global-1"
    assert event["args"]["acceptedDigest"] == DIGEST
    assert event["args"]["reportCid"] == "bafy-report-1"
    assert event["args"]["aggregator"] == roles.aggregator.address
    info = round_info(system, model_id, round)
    assert info.state is RoundState.FINALIZED
    assert info.new_model_hash == NEW_HASH
    assert info.report_hash == REPORT_HASH
    model_after = model_info(system, model_id)
    assert model_after.global_model_hash == NEW_HASH
    assert model_after.global_model_cid == "bafy-global-1"
    assert open_round(system, roles.manager, model_id) == 2
    assert round_info(system, model_id, 2).base_model_hash == NEW_HASH


def test_finalize_below_quorum_fails_round(
    system: System, roles: Any, open_model: Callable[..., tuple[int, int]]
) -> None:
    model_id, round = open_model(quorum=3)
    close_round(system, roles.aggregator, model_id, round)
    receipt = finalize(system, roles, model_id, round, 2)
    (event,) = system.models.events.RoundFailed().process_receipt(
        receipt, errors=DISCARD
    )
    assert (event["args"]["acceptedCount"], event["args"]["quorum"]) == (2, 3)
    assert round_info(system, model_id, round).state is RoundState.FAILED
    assert model_info(system, model_id).global_model_hash == BASE_HASH


def test_finalize_before_deadline_rejected(
    system: System, roles: Any, open_model: Callable[..., tuple[int, int]]
) -> None:
    model_id, round = open_model(round_duration=600)
    with reverts("RoundStillOpen", modelId=model_id, round=round):
        finalize(system, roles, model_id, round, 1)


def test_finalize_after_deadline_without_close(
    system: System, roles: Any, open_model: Callable[..., tuple[int, int]]
) -> None:
    model_id, round = open_model(round_duration=60)
    advance_time(system, 61)
    finalize(system, roles, model_id, round, 1)
    assert round_info(system, model_id, round).state is RoundState.FINALIZED


def test_finalize_twice_rejected(
    system: System, roles: Any, open_model: Callable[..., tuple[int, int]]
) -> None:
    model_id, round = open_model()
    close_round(system, roles.aggregator, model_id, round)
    finalize(system, roles, model_id, round, 1)
    with reverts("RoundStateInvalid", modelId=model_id, round=round, state=3):
        finalize(system, roles, model_id, round, 1)


@pytest.mark.parametrize("caller_name", ["manager", "aggregator2", "outsider"])
def test_finalize_by_non_aggregator_rejected(
    system: System,
    roles: Any,
    open_model: Callable[..., tuple[int, int]],
    caller_name: str,
) -> None:
    model_id, round = open_model()
    caller = getattr(roles, caller_name)
    with reverts("NotModelAggregator", modelId=model_id, account=caller.address):
        close_round(system, caller, model_id, round)


def test_finalize_wrong_round_rejected(
    system: System, roles: Any, open_model: Callable[..., tuple[int, int]]
) -> None:
    model_id, _ = open_model()
    with reverts("RoundNotCurrent", modelId=model_id, round=2, currentRound=1):
        finalize(system, roles, model_id, 2, 1)


# --- commitments ------------------------------------------------------------------------


def test_commit_relayed_stores_and_emits(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    device = enrolled()
    model_id, round = open_model()
    commitment = commitment_for(device.address, model_id, round)
    signature = sign_commitment(system, device, commitment)
    receipt = submit(system, roles.relayer, commitment, signature)
    (event,) = system.models.events.UpdateCommitted().process_receipt(
        receipt, errors=DISCARD
    )
    args = event["args"]
    assert args["device"] == device.address
    assert args["contentHash"] == commitment.content_hash
    assert args["cid"] == UPDATE_CID
    assert args["sampleCount"] == 100
    assert args["nonce"] == 0
    assert args["signer"] == device.address
    assert args["signature"] == signature
    stored = system.models.functions.commitmentOf(
        model_id, round, device.address
    ).call()
    assert stored != b"\x00" * 32
    # Committing does not move the nonce: the one-commitment-per-round rule and the
    # round in the signature already stop replays.
    assert system.devices.functions.deviceOf(device.address).call()[5] == 0


def test_commit_direct_by_device(
    system: System,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    device = enrolled(funded=True)
    model_id, round = open_model()
    receipt = submit(system, device, commitment_for(device.address, model_id, round))
    (event,) = system.models.events.UpdateCommitted().process_receipt(
        receipt, errors=DISCARD
    )
    assert event["args"]["signer"] == device.address
    assert event["args"]["signature"] == b""


def test_commit_direct_by_other_account_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    device = enrolled()
    model_id, round = open_model()
    with reverts(
        "CallerNotDeviceKey",
        device=device.address,
        key=device.address,
        caller=roles.relayer.address,
    ):
        submit(system, roles.relayer, commitment_for(device.address, model_id, round))


def test_commit_twice_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    device = enrolled()
    model_id, round = open_model()
    first = commitment_for(device.address, model_id, round)
    submit(system, roles.relayer, first, sign_commitment(system, device, first))
    second = commitment_for(device.address, model_id, round, content=b"other")
    with reverts(
        "AlreadyCommitted", modelId=model_id, round=round, device=device.address
    ):
        submit(system, roles.relayer, second, sign_commitment(system, device, second))


def test_commitment_digest_matches_python(
    system: System, open_model: Callable[..., tuple[int, int]]
) -> None:
    device = new_key()
    model_id, round = open_model()
    commitment = commitment_for(device.address, model_id, round)
    message = commitment.message(
        chain_id=system.client.chain_id,
        model_registry=system.deployment.model_registry,
        nonce=7,
    )
    on_chain = system.models.functions.commitmentDigest(commitment.as_tuple(), 7).call()
    assert on_chain == eip712.digest(message)


REJECTIONS = [
    "suspended",
    "revoked",
    "unenrolled",
    "never-attested",
    "credential-expired",
    "role-missing",
    "segment-not-allowed",
    "trust-too-low",
    "round-closed",
    "deadline-passed",
    "wrong-round",
]


@pytest.mark.parametrize("case", REJECTIONS)
def test_commit_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
    case: str,
) -> None:
    tx = system.client.transact
    device = {
        "unenrolled": lambda: new_key(),
        "never-attested": lambda: enrolled(attest=False),
        "role-missing": lambda: enrolled(device_roles=2),
        "segment-not-allowed": lambda: enrolled(segment=9),
    }.get(case, enrolled)()
    model_id, round = open_model(
        round_duration=600, min_trust=6000 if case == "trust-too-low" else 2000
    )
    expected: tuple[str, dict[str, Any]]
    if case == "suspended":
        tx(system.devices.functions.suspend(device.address), roles.registrar)
        expected = ("DeviceNotActive", {"device": device.address, "status": 2})
    elif case == "revoked":
        tx(system.devices.functions.revoke(device.address), roles.registrar)
        expected = ("DeviceNotActive", {"device": device.address, "status": 3})
    elif case == "unenrolled":
        expected = ("DeviceNotActive", {"device": device.address, "status": 0})
    elif case == "never-attested":
        expected = ("CredentialExpired", {"device": device.address, "expiresAt": 0})
    elif case == "credential-expired":
        advance_time(system, 86_401)
        # Keep the round open past the credential's expiry.
        tx(system.models.functions.closeRound(model_id, round), roles.aggregator)
        finalize(system, roles, model_id, round, 1)
        round = open_round(system, roles.manager, model_id)
        expected = ("CredentialExpired", {"device": device.address})
    elif case == "role-missing":
        expected = (
            "DeviceRoleMissing",
            {"device": device.address, "roles": 2, "requiredRoles": 1},
        )
    elif case == "segment-not-allowed":
        expected = (
            "SegmentNotAllowed",
            {"modelId": model_id, "device": device.address, "segment": 9},
        )
    elif case == "trust-too-low":
        expected = (
            "TrustTooLow",
            {"device": device.address, "score": 5000, "minTrust": 6000},
        )
    elif case == "round-closed":
        close_round(system, roles.aggregator, model_id, round)
        expected = ("RoundStateInvalid", {"modelId": model_id, "state": 2})
    elif case == "deadline-passed":
        advance_time(system, 601)
        expected = ("RoundDeadlinePassed", {"modelId": model_id, "round": round})
    else:
        round += 1
        expected = ("RoundNotCurrent", {"modelId": model_id, "round": round})
    commitment = commitment_for(
        device.address,
        model_id,
        round,
        base_hash=NEW_HASH if case == "credential-expired" else BASE_HASH,
    )
    name, args = expected
    with reverts(name, **args):
        submit(
            system,
            roles.relayer,
            commitment,
            sign_commitment(system, device, commitment),
        )
