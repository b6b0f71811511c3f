"""DeviceRegistry: enrolment, status, roles, segment, metadata, attestation, keys."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3.logs import DISCARD

from tests.chain.conftest import (
    MEASUREMENT,
    advance_time,
    chain_time,
    fund,
    new_key,
    reverts,
)
from ztfm_chain.chain.deploy import System
from ztfm_chain.identity import eip712, registrar
from ztfm_chain.identity.registrar import DeviceStatus, device_record


def enrol_with(
    system: System,
    caller: LocalAccount,
    key: LocalAccount,
    *,
    signer: LocalAccount | None = None,
    proof_registrar: str | None = None,
    deadline_offset: int = 600,
    metadata_cid: str = "bafy-meta",
) -> Any:
    deadline = chain_time(system) + deadline_offset
    proof = registrar.sign_enrolment(
        system,
        signer or key,
        registrar=proof_registrar or caller.address,
        roles=1,
        segment=7,
        metadata_cid=metadata_cid,
        deadline=deadline,
        device=key.address,
    )
    return registrar.enrol(
        system,
        caller,
        key.address,
        proof,
        roles=1,
        segment=7,
        metadata_cid=metadata_cid,
        deadline=deadline,
    )


def test_enrol_stores_record_and_emits_event(system: System, roles: Any) -> None:
    key = new_key()
    receipt = enrol_with(system, roles.registrar, key)
    (event,) = system.devices.events.DeviceEnrolled().process_receipt(
        receipt, errors=DISCARD
    )
    assert event["args"]["device"] == key.address
    assert event["args"]["registrar"] == roles.registrar.address
    assert event["args"]["roles"] == 1
    assert event["args"]["segment"] == 7
    assert event["args"]["metadataCid"] == "bafy-meta"
    record = device_record(system, key.address)
    assert record.status is DeviceStatus.ACTIVE
    assert record.segment == 7
    assert record.key == key.address
    assert record.credential_expires_at == 0


def test_enrol_twice_rejected(system: System, roles: Any) -> None:
    key = new_key()
    enrol_with(system, roles.registrar, key)
    with reverts("DeviceAlreadyEnrolled", device=key.address, status=1):
        enrol_with(system, roles.registrar, key)


@pytest.mark.parametrize(
    "caller_name", ["admin", "attestor", "manager", "aggregator", "outsider"]
)
def test_enrol_by_non_registrar_rejected(
    system: System, roles: Any, caller_name: str
) -> None:
    caller = getattr(roles, caller_name)
    role = system.devices.functions.REGISTRAR_ROLE().call()
    with reverts(
        "AccessControlUnauthorizedAccount",
        account=caller.address,
        neededRole="0x" + role.hex(),
    ):
        enrol_with(system, caller, new_key())


def test_enrol_proof_by_other_key_rejected(system: System, roles: Any) -> None:
    key, impostor = new_key(), new_key()
    with reverts("SignerMismatch", expected=key.address, recovered=impostor.address):
        enrol_with(system, roles.registrar, key, signer=impostor)


def test_enrol_proof_for_other_registrar_rejected(system: System, roles: Any) -> None:
    key = new_key()
    with reverts("SignerMismatch", expected=key.address):
        enrol_with(system, roles.registrar, key, proof_registrar=roles.outsider.address)


def test_enrol_after_deadline_rejected(system: System, roles: Any) -> None:
    with reverts("SignatureExpired"):
        enrol_with(system, roles.registrar, new_key(), deadline_offset=-10)


def test_enrol_zero_address_rejected(system: System, roles: Any) -> None:
    with reverts("ZeroAddress"):
        registrar.enrol(
            system,
            roles.registrar,
            "0x" + "00" * 20,
            b"\x00" * 65,
            roles=1,
            segment=1,
            metadata_cid="",
            deadline=chain_time(system) + 60,
        )


def test_enrolment_digest_matches_python(system: System, roles: Any) -> None:
    key = new_key()
    message = eip712.enrolment_message(
        chain_id=system.client.chain_id,
        device_registry=system.deployment.device_registry,
        device=key.address,
        roles=3,
        segment=9,
        metadata_cid="bafy-x",
        deadline=123,
        registrar=roles.registrar.address,
    )
    on_chain = system.devices.functions.enrolmentDigest(
        key.address, 3, 9, "bafy-x", 123, roles.registrar.address
    ).call()
    assert on_chain == eip712.digest(message)


# --- status -------------------------------------------------------------------------

TRANSITIONS = [
    # (action, starting status, resulting status or None when rejected)
    ("suspend", DeviceStatus.ACTIVE, DeviceStatus.SUSPENDED),
    ("suspend", DeviceStatus.SUSPENDED, None),
    ("suspend", DeviceStatus.REVOKED, None),
    ("reinstate", DeviceStatus.SUSPENDED, DeviceStatus.ACTIVE),
    ("reinstate", DeviceStatus.ACTIVE, None),
    ("reinstate", DeviceStatus.REVOKED, None),
    ("revoke", DeviceStatus.ACTIVE, DeviceStatus.REVOKED),
    ("revoke", DeviceStatus.SUSPENDED, DeviceStatus.REVOKED),
    ("revoke", DeviceStatus.REVOKED, None),
]


def bring_to(
    system: System, roles: Any, key: LocalAccount, status: DeviceStatus
) -> None:
    registrar.enrol_device(system, roles.registrar, key)
    if status is DeviceStatus.SUSPENDED:
        system.client.transact(
            system.devices.functions.suspend(key.address), roles.registrar
        )
    if status is DeviceStatus.REVOKED:
        system.client.transact(
            system.devices.functions.revoke(key.address), roles.registrar
        )


@pytest.mark.parametrize(
    ("action", "start", "result"),
    TRANSITIONS,
    ids=[f"{a}-from-{s.name.lower()}" for a, s, _ in TRANSITIONS],
)
def test_status_transition(
    system: System,
    roles: Any,
    action: str,
    start: DeviceStatus,
    result: DeviceStatus | None,
) -> None:
    key = new_key()
    bring_to(system, roles, key, start)
    fn = getattr(system.devices.functions, action)(key.address)
    if result is None:
        with reverts(
            "StatusTransitionInvalid", device=key.address, **{"from": int(start)}
        ):
            system.client.transact(fn, roles.registrar)
        assert device_record(system, key.address).status is start
        return
    receipt = system.client.transact(fn, roles.registrar)
    (event,) = system.devices.events.DeviceStatusChanged().process_receipt(
        receipt, errors=DISCARD
    )
    assert event["args"]["from"] == start
    assert event["args"]["to"] == result
    assert event["args"]["registrar"] == roles.registrar.address
    assert device_record(system, key.address).status is result


@pytest.mark.parametrize("action", ["suspend", "reinstate", "revoke"])
def test_status_change_unknown_device_rejected(
    system: System, roles: Any, action: str
) -> None:
    key = new_key()
    fn = getattr(system.devices.functions, action)(key.address)
    with reverts("StatusTransitionInvalid", device=key.address, **{"from": 0}):
        system.client.transact(fn, roles.registrar)


@pytest.mark.parametrize("action", ["suspend", "reinstate", "revoke"])
def test_status_change_by_attestor_rejected(
    system: System, roles: Any, action: str
) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    fn = getattr(system.devices.functions, action)(key.address)
    with reverts("AccessControlUnauthorizedAccount", account=roles.attestor.address):
        system.client.transact(fn, roles.attestor)


def test_revoked_device_cannot_be_enrolled_again(system: System, roles: Any) -> None:
    key = new_key()
    bring_to(system, roles, key, DeviceStatus.REVOKED)
    with reverts("DeviceAlreadyEnrolled", device=key.address, status=3):
        registrar.enrol_device(system, roles.registrar, key)


# --- roles, segment, metadata ----------------------------------------------------------


def test_set_roles_segment_metadata_emit_events(system: System, roles: Any) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    tx = system.client.transact
    receipt = tx(system.devices.functions.setRoles(key.address, 3), roles.registrar)
    (event,) = system.devices.events.DeviceRolesChanged().process_receipt(
        receipt, errors=DISCARD
    )
    assert event["args"]["roles"] == 3
    receipt = tx(system.devices.functions.setSegment(key.address, 42), roles.registrar)
    (event,) = system.devices.events.DeviceSegmentChanged().process_receipt(
        receipt, errors=DISCARD
    )
    assert event["args"]["segment"] == 42
    receipt = tx(
        system.devices.functions.setMetadata(key.address, "bafy-new"), roles.registrar
    )
    (event,) = system.devices.events.DeviceMetadataChanged().process_receipt(
        receipt, errors=DISCARD
    )
    assert event["args"]["metadataCid"] == "bafy-new"
    record = device_record(system, key.address)
    assert (record.roles, record.segment) == (3, 42)
    expected_hash = system.client.w3.keccak(text="bafy-new")
    assert system.devices.functions.metadataHashOf(key.address).call() == expected_hash


def test_setters_without_change_emit_nothing(system: System, roles: Any) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key, roles=1, segment=1)
    receipt = system.client.transact(
        system.devices.functions.setSegment(key.address, 1), roles.registrar
    )
    assert (
        system.devices.events.DeviceSegmentChanged().process_receipt(
            receipt, errors=DISCARD
        )
        == ()
    )


@pytest.mark.parametrize(
    ("setter", "args"),
    [("setRoles", (3,)), ("setSegment", (5,)), ("setMetadata", ("bafy",))],
    ids=["roles", "segment", "metadata"],
)
def test_setters_on_revoked_device_rejected(
    system: System, roles: Any, setter: str, args: tuple[Any, ...]
) -> None:
    key = new_key()
    bring_to(system, roles, key, DeviceStatus.REVOKED)
    with reverts("DeviceIsRevoked", device=key.address):
        system.client.transact(
            getattr(system.devices.functions, setter)(key.address, *args),
            roles.registrar,
        )


def test_setters_on_unknown_device_rejected(system: System, roles: Any) -> None:
    key = new_key()
    with reverts("DeviceNotEnrolled", device=key.address):
        system.client.transact(
            system.devices.functions.setRoles(key.address, 1), roles.registrar
        )


# --- attestation ----------------------------------------------------------------------


def sign_and_attest(
    system: System,
    roles: Any,
    device: str,
    *,
    signer: LocalAccount | None = None,
    issued_at: int | None = None,
    lifetime: int = 3600,
) -> Any:
    issued = chain_time(system) if issued_at is None else issued_at
    signature = registrar.sign_attestation(
        system,
        signer or roles.attestor,
        device,
        measurement=MEASUREMENT,
        issued_at=issued,
        expires_at=issued + lifetime,
    )
    return registrar.attest(
        system,
        roles.relayer,
        device,
        signature,
        measurement=MEASUREMENT,
        issued_at=issued,
        expires_at=issued + lifetime,
    )


def test_attest_relayed_stores_credential(system: System, roles: Any) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    assert not system.devices.functions.isCredentialValid(key.address).call()
    receipt = sign_and_attest(system, roles, key.address)
    (event,) = system.devices.events.DeviceAttested().process_receipt(
        receipt, errors=DISCARD
    )
    assert event["args"]["attestor"] == roles.attestor.address
    assert event["args"]["measurement"] == MEASUREMENT
    assert system.devices.functions.measurementOf(key.address).call() == MEASUREMENT
    assert system.devices.functions.isCredentialValid(key.address).call()


def test_credential_expires(system: System, roles: Any) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    sign_and_attest(system, roles, key.address, lifetime=100)
    advance_time(system, 101)
    assert not system.devices.functions.isCredentialValid(key.address).call()


def test_credential_invalid_when_suspended(system: System, roles: Any) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    sign_and_attest(system, roles, key.address)
    system.client.transact(
        system.devices.functions.suspend(key.address), roles.registrar
    )
    assert not system.devices.functions.isCredentialValid(key.address).call()


@pytest.mark.parametrize("signer_name", ["registrar", "outsider", "admin"])
def test_attest_by_non_attestor_rejected(
    system: System, roles: Any, signer_name: str
) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    signer = getattr(roles, signer_name)
    with reverts("SignerNotAttestor", recovered=signer.address):
        sign_and_attest(system, roles, key.address, signer=signer)


def test_attest_replayed_statement_rejected(system: System, roles: Any) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    issued = chain_time(system)
    sign_and_attest(system, roles, key.address, issued_at=issued)
    with reverts("AttestationNotNewer", issuedAt=issued, storedIssuedAt=issued):
        sign_and_attest(system, roles, key.address, issued_at=issued)


def test_attest_from_future_rejected(system: System, roles: Any) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    with reverts("AttestationTimeInvalid"):
        sign_and_attest(system, roles, key.address, issued_at=chain_time(system) + 1000)


def test_attest_expired_statement_rejected(system: System, roles: Any) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    with reverts("AttestationTimeInvalid"):
        sign_and_attest(
            system, roles, key.address, issued_at=chain_time(system) - 100, lifetime=50
        )


def test_attest_revoked_device_rejected(system: System, roles: Any) -> None:
    key = new_key()
    bring_to(system, roles, key, DeviceStatus.REVOKED)
    with reverts("DeviceIsRevoked", device=key.address):
        sign_and_attest(system, roles, key.address)


# --- key rotation ----------------------------------------------------------------------


def test_rotate_key_updates_erc1056_owner(system: System, roles: Any) -> None:
    old, new = new_key(), new_key()
    registrar.enrol_device(system, roles.registrar, old)
    receipt = registrar.rotate_key(system, roles.registrar, old.address, old, new)
    (event,) = system.devices.events.DeviceKeyRotated().process_receipt(
        receipt, errors=DISCARD
    )
    assert event["args"]["oldKey"] == old.address
    assert event["args"]["newKey"] == new.address
    assert system.devices.functions.keyOf(old.address).call() == new.address
    assert (
        system.did_registry.functions.identityOwner(old.address).call() == new.address
    )


def test_rotate_key_twice_chains(system: System, roles: Any) -> None:
    first, second, third = new_key(), new_key(), new_key()
    registrar.enrol_device(system, roles.registrar, first)
    registrar.rotate_key(system, roles.registrar, first.address, first, second)
    registrar.rotate_key(system, roles.registrar, first.address, second, third)
    assert system.devices.functions.keyOf(first.address).call() == third.address


def test_rotate_key_without_old_key_consent_rejected(
    system: System, roles: Any
) -> None:
    device, impostor, new = new_key(), new_key(), new_key()
    registrar.enrol_device(system, roles.registrar, device)
    with pytest.raises(Exception, match=r"bad_signature"):
        registrar.rotate_key(system, roles.registrar, device.address, impostor, new)
    assert system.devices.functions.keyOf(device.address).call() == device.address


def test_rotate_to_same_key_rejected(system: System, roles: Any) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    with reverts("NewKeyInvalid", device=key.address, newKey=key.address):
        registrar.rotate_key(system, roles.registrar, key.address, key, key)


def test_rotate_key_of_revoked_device_rejected(system: System, roles: Any) -> None:
    key = new_key()
    bring_to(system, roles, key, DeviceStatus.REVOKED)
    with reverts("DeviceIsRevoked", device=key.address):
        registrar.rotate_key(system, roles.registrar, key.address, key, new_key())


@pytest.mark.parametrize("caller_name", ["device", "registrar"])
def test_increase_nonce_by_device_or_registrar(
    system: System, roles: Any, caller_name: str
) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    fund(system, key.address)
    caller = key if caller_name == "device" else roles.registrar
    receipt = system.client.transact(
        system.devices.functions.increaseNonce(key.address), caller
    )
    (event,) = system.devices.events.DeviceNonceIncreased().process_receipt(
        receipt, errors=DISCARD
    )
    assert event["args"]["nonce"] == 1
    assert device_record(system, key.address).nonce == 1


@pytest.mark.parametrize("caller_name", ["attestor", "outsider", "admin"])
def test_increase_nonce_by_others_rejected(
    system: System, roles: Any, caller_name: str
) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    caller = getattr(roles, caller_name)
    with reverts("NotDeviceKeyOrRegistrar", device=key.address, caller=caller.address):
        system.client.transact(
            system.devices.functions.increaseNonce(key.address), caller
        )
