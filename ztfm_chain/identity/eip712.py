"""EIP-712 messages that devices, registrars' devices and attestors sign.

Each builder returns the full typed-data dictionary that
``eth_account.messages.encode_typed_data(full_message=...)`` takes. The type strings
and field order match the contracts' type hashes exactly, and every domain carries the
chain id and the verifying contract, so a signature is valid for one deployment on one
chain only. :func:`digest` computes the 32-byte hash the contracts verify.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, Hash32
from eth_utils.address import to_checksum_address
from eth_utils.conversions import to_bytes
from eth_utils.crypto import keccak

from ztfm_chain.exceptions import SignatureError, UsageError

DEVICE_REGISTRY_DOMAIN = ("ztfm DeviceRegistry", "1")
MODEL_REGISTRY_DOMAIN = ("ztfm ModelRegistry", "1")

#: secp256k1 group order; a signature's ``s`` must be at most half of it (EIP-2).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]

ENROLMENT_TYPE = [
    {"name": "device", "type": "address"},
    {"name": "roles", "type": "uint16"},
    {"name": "segment", "type": "uint32"},
    {"name": "metadataCid", "type": "string"},
    {"name": "deadline", "type": "uint64"},
    {"name": "registrar", "type": "address"},
]
ATTESTATION_TYPE = [
    {"name": "device", "type": "address"},
    {"name": "measurement", "type": "bytes32"},
    {"name": "issuedAt", "type": "uint64"},
    {"name": "expiresAt", "type": "uint64"},
]
KEY_ROTATION_TYPE = [
    {"name": "device", "type": "address"},
    {"name": "newKey", "type": "address"},
    {"name": "deadline", "type": "uint64"},
]
COMMITMENT_TYPE = [
    {"name": "modelId", "type": "uint256"},
    {"name": "round", "type": "uint64"},
    {"name": "device", "type": "address"},
    {"name": "contentHash", "type": "bytes32"},
    {"name": "cid", "type": "string"},
    {"name": "sampleCount", "type": "uint32"},
    {"name": "baseModelHash", "type": "bytes32"},
    {"name": "nonce", "type": "uint64"},
]


def domain(
    name_version: tuple[str, str], chain_id: int, verifying_contract: str
) -> dict[str, Any]:
    """Return an EIP-712 domain bound to one chain and one contract."""
    name, version = name_version
    return {
        "name": name,
        "version": version,
        "chainId": chain_id,
        "verifyingContract": to_checksum_address(verifying_contract),
    }


def enrolment_message(
    *,
    chain_id: int,
    device_registry: str,
    device: str,
    roles: int,
    segment: int,
    metadata_cid: str,
    deadline: int,
    registrar: str,
) -> dict[str, Any]:
    """Build the message a device signs to prove it holds its key at enrolment."""
    return _typed(
        "Enrolment",
        ENROLMENT_TYPE,
        domain(DEVICE_REGISTRY_DOMAIN, chain_id, device_registry),
        {
            "device": to_checksum_address(device),
            "roles": roles,
            "segment": segment,
            "metadataCid": metadata_cid,
            "deadline": deadline,
            "registrar": to_checksum_address(registrar),
        },
    )


def attestation_message(
    *,
    chain_id: int,
    device_registry: str,
    device: str,
    measurement: bytes,
    issued_at: int,
    expires_at: int,
) -> dict[str, Any]:
    """Build the statement an attestor signs about a device's measurement."""
    return _typed(
        "Attestation",
        ATTESTATION_TYPE,
        domain(DEVICE_REGISTRY_DOMAIN, chain_id, device_registry),
        {
            "device": to_checksum_address(device),
            "measurement": _bytes32(measurement, "measurement"),
            "issuedAt": issued_at,
            "expiresAt": expires_at,
        },
    )


def key_rotation_message(
    *, chain_id: int, device_registry: str, device: str, new_key: str, deadline: int
) -> dict[str, Any]:
    """Build the message a new key signs to prove possession during rotation."""
    return _typed(
        "KeyRotation",
        KEY_ROTATION_TYPE,
        domain(DEVICE_REGISTRY_DOMAIN, chain_id, device_registry),
        {
            "device": to_checksum_address(device),
            "newKey": to_checksum_address(new_key),
            "deadline": deadline,
        },
    )


def commitment_message(
    *,
    chain_id: int,
    model_registry: str,
    model_id: int,
    round: int,
    device: str,
    content_hash: bytes,
    cid: str,
    sample_count: int,
    base_model_hash: bytes,
    nonce: int,
) -> dict[str, Any]:
    """Build the update commitment a device signs for a relayer to submit."""
    return _typed(
        "UpdateCommitment",
        COMMITMENT_TYPE,
        domain(MODEL_REGISTRY_DOMAIN, chain_id, model_registry),
        {
            "modelId": model_id,
            "round": round,
            "device": to_checksum_address(device),
            "contentHash": _bytes32(content_hash, "content_hash"),
            "cid": cid,
            "sampleCount": sample_count,
            "baseModelHash": _bytes32(base_model_hash, "base_model_hash"),
            "nonce": nonce,
        },
    )


def digest(message: dict[str, Any]) -> bytes:
    """Return the 32-byte EIP-712 digest of a typed-data message."""
    return bytes(_hash_eip191_message(encode_typed_data(full_message=message)))


def sign(message: dict[str, Any], account: LocalAccount) -> bytes:
    """Sign a typed-data message; return the 65-byte ``r || s || v`` signature."""
    signed = account.sign_message(encode_typed_data(full_message=message))
    return bytes(signed.signature)


def recover(message: dict[str, Any], signature: bytes) -> ChecksumAddress:
    """Recover the signer of a typed-data message, rejecting what the contracts reject.

    Raises :class:`SignatureError` for a length other than 65 bytes, a ``v`` other than
    0, 1, 27 or 28, and a high ``s``.
    """
    check_signature_form(signature)
    v = signature[64]
    normalised = signature[:64] + bytes([v + 27 if v < 27 else v])
    recovered: str = Account._recover_hash(digest(message), signature=normalised)
    return to_checksum_address(recovered)


def check_signature_form(signature: bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is 65 bytes, low-s, v valid."""
    if len(signature) != 65:
        raise SignatureError(
            f"signature must be 65 bytes (r || s || v), got {len(signature)} bytes"
        )
    s = int.from_bytes(signature[32:64], "big")
    if s > SECP256K1_N // 2:
        raise SignatureError(
            f"signature has a high s value (0x{s:064x}): malleable signatures are "
            "rejected; re-sign with a library that normalises s (EIP-2)"
        )
    if signature[64] not in (0, 1, 27, 28):
        raise SignatureError(
            f"signature recovery id v={signature[64]} is invalid; expected 0, 1, 27 or 28"
        )


def malleate(signature: bytes) -> bytes:
    """Return the high-s twin of a valid signature (for tests of rejection)."""
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    flipped = 27 + (1 - (v - 27)) if v >= 27 else 1 - v
    return r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([flipped])


def change_owner_hash(
    did_registry: str, identity: str, new_owner: str, owner_nonce: int
) -> bytes:
    """Return the hash ERC-1056 ``changeOwnerSigned`` expects the current owner to sign.

    The registry predates EIP-712: it hashes ``0x19 0x00 || registry || nonce ||
    identity || "changeOwner" || newOwner`` with the current owner's nonce.
    """
    return bytes(
        keccak(
            b"\x19\x00"
            + to_bytes(hexstr=to_checksum_address(did_registry))
            + owner_nonce.to_bytes(32, "big")
            + to_bytes(hexstr=to_checksum_address(identity))
            + b"changeOwner"
            + to_bytes(hexstr=to_checksum_address(new_owner))
        )
    )


def sign_hash(hash_: bytes, account: LocalAccount) -> tuple[int, bytes, bytes]:
    """Sign a raw 32-byte hash; return ``(v, r, s)`` with v as 27/28."""
    signed = account.unsafe_sign_hash(Hash32(hash_))
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


def _typed(
    primary: str,
    fields: list[dict[str, str]],
    domain_data: dict[str, Any],
    message: dict[str, Any],
) -> dict[str, Any]:
    return {
        "types": {"EIP712Domain": _DOMAIN_TYPE, primary: fields},
        "primaryType": primary,
        "domain": domain_data,
        "message": message,
    }


def _bytes32(value: bytes, name: str) -> bytes:
    if len(value) != 32:
        raise UsageError(f"{name} must be 32 bytes, got {len(value)}: {value!r}")
    return value
