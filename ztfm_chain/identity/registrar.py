"""Registrar and attestor operations on the DeviceRegistry, signed with local keys."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_account.signers.local import LocalAccount
from web3.types import BlockIdentifier, TxReceipt

from ztfm_chain.chain.deploy import System
from ztfm_chain.identity import eip712

#: Device role bit for devices that may train and submit updates.
ROLE_TRAINER = 1
#: How long a device's enrolment proof stays valid, in seconds.
PROOF_LIFETIME = 600


class DeviceStatus(IntEnum):
    """Lifecycle of a device, as the DeviceRegistry stores it."""

    NONE = 0
    ACTIVE = 1
    SUSPENDED = 2
    REVOKED = 3


@dataclass(frozen=True)
class DeviceRecord:
    """A device's on-chain record and current key."""

    status: DeviceStatus
    roles: int
    segment: int
    credential_expires_at: int
    attested_at: int
    nonce: int
    key: str

    @classmethod
    def from_struct(cls, values: Any, key: str) -> DeviceRecord:
        """Build from the ABI-decoded ``Device`` struct and the device's key."""
        return cls(
            status=DeviceStatus(values[0]),
            roles=int(values[1]),
            segment=int(values[2]),
            credential_expires_at=int(values[3]),
            attested_at=int(values[4]),
            nonce=int(values[5]),
            key=str(key),
        )


def sign_enrolment(
    system: System,
    device_key: LocalAccount,
    *,
    registrar: str,
    roles: int,
    segment: int,
    metadata_cid: str,
    deadline: int,
    device: str | None = None,
) -> bytes:
    """Sign, as the device, the proof of key possession a registrar submits."""
    message = eip712.enrolment_message(
        chain_id=system.client.chain_id,
        device_registry=system.deployment.device_registry,
        device=device or device_key.address,
        roles=roles,
        segment=segment,
        metadata_cid=metadata_cid,
        deadline=deadline,
        registrar=registrar,
    )
    return eip712.sign(message, device_key)


def enrol(
    system: System,
    registrar: LocalAccount,
    device: str,
    proof: bytes,
    *,
    roles: int,
    segment: int,
    metadata_cid: str,
    deadline: int,
) -> TxReceipt:
    """Enrol ``device`` with the device's signed proof (see :func:`sign_enrolment`)."""
    return system.client.transact(
        system.devices.functions.enrol(
            device, roles, segment, metadata_cid, deadline, proof
        ),
        registrar,
    )


def enrol_device(
    system: System,
    registrar: LocalAccount,
    device_key: LocalAccount,
    *,
    roles: int = ROLE_TRAINER,
    segment: int = 1,
    metadata_cid: str = "",
) -> TxReceipt:
    """Enrol a device whose key is at hand: sign its proof, then submit it."""
    deadline = _now(system) + PROOF_LIFETIME
    proof = sign_enrolment(
        system,
        device_key,
        registrar=registrar.address,
        roles=roles,
        segment=segment,
        metadata_cid=metadata_cid,
        deadline=deadline,
    )
    return enrol(
        system,
        registrar,
        device_key.address,
        proof,
        roles=roles,
        segment=segment,
        metadata_cid=metadata_cid,
        deadline=deadline,
    )


def sign_attestation(
    system: System,
    attestor: LocalAccount,
    device: str,
    *,
    measurement: bytes,
    issued_at: int,
    expires_at: int,
) -> bytes:
    """Sign, as an attestor, a statement about a device's measurement and expiry."""
    message = eip712.attestation_message(
        chain_id=system.client.chain_id,
        device_registry=system.deployment.device_registry,
        device=device,
        measurement=measurement,
        issued_at=issued_at,
        expires_at=expires_at,
    )
    return eip712.sign(message, attestor)


def attest(
    system: System,
    relayer: LocalAccount,
    device: str,
    signature: bytes,
    *,
    measurement: bytes,
    issued_at: int,
    expires_at: int,
) -> TxReceipt:
    """Submit a signed attestation statement; any account may relay it."""
    return system.client.transact(
        system.devices.functions.attest(
            device, measurement, issued_at, expires_at, signature
        ),
        relayer,
    )


def attest_device(
    system: System,
    attestor: LocalAccount,
    device: str,
    *,
    measurement: bytes,
    lifetime: int = 86_400,
) -> TxReceipt:
    """Sign and submit, as the attestor, a credential valid for ``lifetime`` seconds."""
    issued_at = _now(system)
    expires_at = issued_at + lifetime
    signature = sign_attestation(
        system,
        attestor,
        device,
        measurement=measurement,
        issued_at=issued_at,
        expires_at=expires_at,
    )
    return attest(
        system,
        attestor,
        device,
        signature,
        measurement=measurement,
        issued_at=issued_at,
        expires_at=expires_at,
    )


def rotate_key(
    system: System,
    registrar: LocalAccount,
    device: str,
    old_key: LocalAccount,
    new_key: LocalAccount,
) -> TxReceipt:
    """Rotate a device's key with the consent of both keys; the DID stays the same."""
    deadline = _now(system) + PROOF_LIFETIME
    proof = eip712.sign(
        eip712.key_rotation_message(
            chain_id=system.client.chain_id,
            device_registry=system.deployment.device_registry,
            device=device,
            new_key=new_key.address,
            deadline=deadline,
        ),
        new_key,
    )
    owner_nonce = system.client.call(
        system.did_registry.functions.nonce(old_key.address)
    )
    v, r, s = eip712.sign_hash(
        eip712.change_owner_hash(
            system.deployment.did_registry, device, new_key.address, owner_nonce
        ),
        old_key,
    )
    return system.client.transact(
        system.devices.functions.rotateKey(
            device, new_key.address, deadline, proof, v, r, s
        ),
        registrar,
    )


def device_record(
    system: System, device: str, block: BlockIdentifier = "latest"
) -> DeviceRecord:
    """Read a device's record and current key."""
    raw, key = system.client.call(system.devices.functions.deviceWithKey(device), block)
    return DeviceRecord.from_struct(raw, key)


def _now(system: System) -> int:
    # The chain's clock, not the local one: a statement "issued" after the block that
    # includes it is rejected, and dev chains may run ahead of or behind wall time.
    block = system.client.read(lambda: system.client.w3.eth.get_block("latest"))
    return int(block["timestamp"])
