"""Commitment signatures: replay, malleability, length and recovery id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from tests.chain.conftest import commitment_for, new_key, reverts
from ztfm_chain.chain.deploy import System, connect, deploy
from ztfm_chain.chain.models import close_round, finalize_round, open_round
from ztfm_chain.exceptions import SignatureError
from ztfm_chain.identity import eip712, registrar
from ztfm_chain.identity.commitments import Commitment, sign_commitment, submit


def relay(system: System, roles: Any, commitment: Commitment, signature: bytes) -> Any:
    return submit(system, roles.relayer, commitment, signature)


def finish_round(system: System, roles: Any, model_id: int, round: int) -> None:
    close_round(system, roles.aggregator, model_id, round)
    finalize_round(
        system,
        roles.aggregator,
        model_id,
        round,
        new_model_hash=b"\x01" * 32,
        new_model_cid="bafy-next",
        accepted_digest=b"\x02" * 32,
        accepted_count=1,
        report_hash=b"\x03" * 32,
        report_cid="bafy-report",
    )


def test_signature_replayed_in_next_round_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    device = enrolled()
    model_id, round = open_model()
    first = commitment_for(device.address, model_id, round)
    signature = sign_commitment(system, device, first)
    relay(system, roles, first, signature)
    finish_round(system, roles, model_id, round)
    next_round = open_round(system, roles.manager, model_id)
    replayed = commitment_for(
        device.address, model_id, next_round, base_hash=b"\x01" * 32
    )
    # Same signature over another round: recovers some other address.
    with reverts("SignerMismatch", expected=device.address):
        relay(system, roles, replayed, signature)


def test_signature_replayed_on_other_model_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    device = enrolled()
    model_a, round_a = open_model()
    model_b, round_b = open_model()
    signature = sign_commitment(
        system, device, commitment_for(device.address, model_a, round_a)
    )
    with reverts("SignerMismatch", expected=device.address):
        relay(
            system, roles, commitment_for(device.address, model_b, round_b), signature
        )


def test_signature_with_stale_nonce_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    device = enrolled()
    model_id, round = open_model()
    commitment = commitment_for(device.address, model_id, round)
    signature = sign_commitment(system, device, commitment, nonce=5)
    with reverts("SignerMismatch", expected=device.address):
        relay(system, roles, commitment, signature)


def test_signature_voided_by_nonce_increase_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    device = enrolled()
    model_id, round = open_model()
    commitment = commitment_for(device.address, model_id, round)
    signature = sign_commitment(system, device, commitment)
    system.client.transact(
        system.devices.functions.increaseNonce(device.address), roles.registrar
    )
    with reverts("SignerMismatch", expected=device.address):
        relay(system, roles, commitment, signature)
    relay(system, roles, commitment, sign_commitment(system, device, commitment))


def test_signature_for_other_contract_or_chain_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    device = enrolled()
    model_id, round = open_model()
    commitment = commitment_for(device.address, model_id, round)
    for chain_id, contract in [
        (system.client.chain_id, system.deployment.device_registry),
        (1, system.deployment.model_registry),
    ]:
        message = commitment.message(
            chain_id=chain_id, model_registry=contract, nonce=0
        )
        with reverts("SignerMismatch", expected=device.address):
            relay(system, roles, commitment, eip712.sign(message, device))


def test_signature_replayed_on_second_deployment_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    device = enrolled()
    model_id, round = open_model()
    commitment = commitment_for(device.address, model_id, round)
    signature = sign_commitment(system, device, commitment)
    other = connect(
        system.client,
        deploy(
            system.client,
            roles.admin,
            registrar_roles(roles),
        ),
    )
    registrar.enrol_device(other, roles.registrar, device)
    registrar.attest_device(
        other, roles.attestor, device.address, measurement=b"\x00" * 32
    )
    from ztfm_chain.chain.models import ModelParams, create_model

    other_model = create_model(
        other,
        roles.manager,
        base_model_hash=commitment.base_model_hash,
        base_model_cid="bafy",
        params=ModelParams(),
        segments=[1],
        aggregators=[roles.aggregator.address],
    )
    open_round(other, roles.manager, other_model)
    with reverts("SignerMismatch", expected=device.address):
        relay(other, roles, commitment, signature)


def registrar_roles(roles: Any) -> Any:
    from ztfm_chain.chain.deploy import RoleHolders

    return RoleHolders(
        registrar=roles.registrar.address,
        attestor=roles.attestor.address,
        model_manager=roles.manager.address,
        aggregators=(roles.aggregator.address,),
    )


def test_high_s_signature_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    device = enrolled()
    model_id, round = open_model()
    commitment = commitment_for(device.address, model_id, round)
    signature = sign_commitment(system, device, commitment)
    malleated = eip712.malleate(signature)
    with reverts("SignatureHighS", s="0x" + malleated[32:64].hex()):
        relay(system, roles, commitment, malleated)
    message = commitment.message(
        chain_id=system.client.chain_id,
        model_registry=system.deployment.model_registry,
        nonce=0,
    )
    with pytest.raises(SignatureError, match="high s"):
        eip712.recover(message, malleated)


@pytest.mark.parametrize("length", [0, 64, 66])
def test_wrong_length_signature_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
    length: int,
) -> None:
    device = enrolled()
    model_id, round = open_model()
    commitment = commitment_for(device.address, model_id, round)
    signature = (sign_commitment(system, device, commitment) + b"\x00")[:length]
    if length == 0:
        # An empty signature selects the direct path: the relayer is not the device.
        with reverts("CallerNotDeviceKey", device=device.address):
            relay(system, roles, commitment, signature)
        return
    with reverts("SignatureLengthInvalid", length=length):
        relay(system, roles, commitment, signature)
    with pytest.raises(SignatureError, match="65 bytes"):
        eip712.check_signature_form(signature)


@pytest.mark.parametrize("v_form", ["27-28", "0-1"])
def test_recovery_id_forms_accepted(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
    v_form: str,
) -> None:
    device = enrolled()
    model_id, round = open_model()
    commitment = commitment_for(device.address, model_id, round)
    signature = sign_commitment(system, device, commitment)
    assert signature[64] in (27, 28)
    if v_form == "0-1":
        signature = signature[:64] + bytes([signature[64] - 27])
    relay(system, roles, commitment, signature)


@pytest.mark.parametrize("v", [2, 26, 29, 255])
def test_invalid_recovery_id_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
    v: int,
) -> None:
    device = enrolled()
    model_id, round = open_model()
    commitment = commitment_for(device.address, model_id, round)
    signature = sign_commitment(system, device, commitment)[:64] + bytes([v])
    with reverts("SignatureRecoveryIdInvalid", v=v):
        relay(system, roles, commitment, signature)


def test_rotated_key_old_signatures_rejected(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    device = enrolled()
    new = new_key()
    registrar.rotate_key(system, roles.registrar, device.address, device, new)
    model_id, round = open_model()
    commitment = commitment_for(device.address, model_id, round)
    with reverts("SignerMismatch", expected=new.address, recovered=device.address):
        relay(system, roles, commitment, sign_commitment(system, device, commitment))
    relay(system, roles, commitment, sign_commitment(system, new, commitment))


def test_revoked_device_never_commits_again(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    device = enrolled()
    system.client.transact(
        system.devices.functions.revoke(device.address), roles.registrar
    )
    for action in ("reinstate", "suspend"):
        with reverts("StatusTransitionInvalid", device=device.address):
            system.client.transact(
                getattr(system.devices.functions, action)(device.address),
                roles.registrar,
            )
    with reverts("DeviceIsRevoked", device=device.address):
        registrar.attest_device(
            system, roles.attestor, device.address, measurement=b"\x00" * 32
        )
    model_id, round = open_model()
    commitment = commitment_for(device.address, model_id, round)
    with reverts("DeviceNotActive", device=device.address, status=3):
        relay(system, roles, commitment, sign_commitment(system, device, commitment))
