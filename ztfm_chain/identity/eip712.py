"""EIP-712 messages that devices, registrars' devices and attestors sign.

Each builder returns the full typed-data dictionary that
``eth_account.messages.encode_typed_data(full_message=...)`` takes. The type strings
and field order match the contracts' type hashes exactly, and every domain carries the
chain id and the verifying contract, so a signature is valid for one deployment on one
chain only. :func:`digest` computes the 32-byte hash the contracts verify.

The aggregator checks many commitment signatures, so commitments also have a fast
path. :func:`commitment_digest` packs the struct by hand with a cached domain
separator and returns what :func:`digest` returns for the commitment's message.
:func:`recover_address` calls libsecp256k1 directly and returns the address that
:func:`recover` returns, as 20 bytes.
"""

from __future__ import annotations

import functools
from typing import Any

from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, Hash32
from eth_utils.address import to_checksum_address
from eth_utils.conversions import to_bytes
from eth_utils.crypto import keccak

from ztfm_chain.exceptions import SignatureError, UsageError
from ztfm_chain.identity.native import keccak256, recover_public_key

DEVICE_REGISTRY_DOMAIN = ("ztfm DeviceRegistry", "1")
MODEL_REGISTRY_DOMAIN = ("ztfm ModelRegistry", "1")

#: secp256k1 group order; a signature's ``s`` must be at most half of it (EIP-2).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_MAX_LOW_S = (SECP256K1_N // 2).to_bytes(32, "big")
# The secp256k1 recovery id (0 or 1) of each ``v`` that the contracts accept.
_RECOVERY_IDS = {0: 0, 1: 1, 27: 0, 28: 1}

_UINT32_LIMIT = 1 << 32
_UINT64_LIMIT = 1 << 64
_UINT256_LIMIT = 1 << 256
_ADDRESS_PADDING = bytes(12)

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


def _encode_type(primary: str, fields: list[dict[str, str]]) -> bytes:
    """Return the EIP-712 type string of a struct without referenced structs."""
    members = ",".join(f"{field['type']} {field['name']}" for field in fields)
    return f"{primary}({members})".encode()


_DOMAIN_TYPE_HASH = keccak256(_encode_type("EIP712Domain", _DOMAIN_TYPE))
#: Keccak-256 of the ``UpdateCommitment`` type string, ModelRegistry's type hash.
COMMITMENT_TYPE_HASH = keccak256(_encode_type("UpdateCommitment", COMMITMENT_TYPE))


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
    0, 1, 27 or 28, a high ``s``, and a signature from which no public key can be
    recovered.
    """
    return to_checksum_address(recover_address(digest(message), signature))


def recover_address(digest: bytes, signature: bytes) -> bytes:
    """Recover the 20-byte address that signed a 32-byte digest.

    The checks are those of the contracts' ``Signatures.recover``: 65 bytes, ``v`` as
    0, 1, 27 or 28, ``s`` at most half the group order (EIP-2), and a public key
    recoverable from ``r`` and ``s``. Each failure raises :class:`SignatureError`.
    Compare the result with the expected address as bytes, for example
    ``bytes.fromhex(key[2:])``, because EIP-55 checksum formatting is slow.
    """
    if len(digest) != 32:
        raise UsageError(f"digest must be 32 bytes, got {len(digest)}: {digest!r}")
    if (
        len(signature) != 65
        or signature[32:64] > _MAX_LOW_S
        or signature[64] not in _RECOVERY_IDS
    ):
        check_signature_form(signature)
    try:
        public_key = recover_public_key(
            digest, signature[:64], _RECOVERY_IDS[signature[64]]
        )
    except ValueError as exc:
        # libsecp256k1 rejects r or s that is zero or not below the group order, and
        # an r that is not the x coordinate of a curve point, as ecrecover does.
        raise SignatureError(
            f"signature is invalid: {exc} (r=0x{signature[:32].hex()}, "
            f"s=0x{signature[32:64].hex()}, v={signature[64]}). Sign the message again"
        ) from None
    # An address is the last 20 bytes of the Keccak-256 of the public key.
    return keccak256(public_key)[12:]


def check_signature_form(signature: bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is 65 bytes, low-s, v valid."""
    if len(signature) != 65:
        raise SignatureError(
            f"signature must be 65 bytes (r || s || v), got {len(signature)} bytes"
        )
    # Both are 32-byte big-endian numbers, so byte order is number order.
    if signature[32:64] > _MAX_LOW_S:
        raise SignatureError(
            f"signature has a high s value (0x{signature[32:64].hex()}): malleable "
            "signatures are rejected. Re-sign with a library that normalises s (EIP-2)"
        )
    if signature[64] not in _RECOVERY_IDS:
        raise SignatureError(
            f"signature recovery id v={signature[64]} is invalid; expected 0, 1, 27 or 28"
        )


@functools.lru_cache(maxsize=64)
def domain_separator(
    name: str, version: str, chain_id: int, verifying_contract: str
) -> bytes:
    """Compute the EIP-712 domain separator of one contract on one chain, cached.

    It equals ``_domainSeparatorV4()`` of an OpenZeppelin ``EIP712(name, version)``
    contract at ``verifying_contract``. Raises :class:`UsageError` for a chain id
    outside uint256 or an invalid address.
    """
    _check_uint(chain_id, 256, "chain_id")
    contract = _address_bytes(verifying_contract, "verifying_contract")
    return keccak256(
        _DOMAIN_TYPE_HASH
        + keccak256(name.encode())
        + keccak256(version.encode())
        + chain_id.to_bytes(32, "big")
        + _ADDRESS_PADDING
        + contract
    )


def commitment_digest(
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
) -> bytes:
    """Compute the EIP-712 digest of an ``UpdateCommitment`` by packing it by hand.

    The result equals ``digest(commitment_message(...))`` with the same arguments and
    the ModelRegistry's ``commitmentDigest(commitment, nonce)``. It is faster because
    the domain separator is cached and no typed-data encoder runs.
    Raises :class:`UsageError` for an integer outside its Solidity type, a hash that
    is not 32 bytes, an invalid device address or a CID that is not valid Unicode.
    """
    if not (
        0 <= model_id < _UINT256_LIMIT
        and 0 <= round < _UINT64_LIMIT
        and 0 <= sample_count < _UINT32_LIMIT
        and 0 <= nonce < _UINT64_LIMIT
    ):
        _check_uint(model_id, 256, "model_id")
        _check_uint(round, 64, "round")
        _check_uint(sample_count, 32, "sample_count")
        _check_uint(nonce, 64, "nonce")
    if len(content_hash) != 32 or len(base_model_hash) != 32:
        _bytes32(content_hash, "content_hash")
        _bytes32(base_model_hash, "base_model_hash")
    name, version = MODEL_REGISTRY_DOMAIN
    separator = domain_separator(name, version, chain_id, model_registry)
    try:
        cid_bytes = cid.encode()
    except UnicodeEncodeError as exc:
        raise UsageError(f"cid is not valid Unicode text ({exc}): {cid!r}") from None
    # EIP-712 encodes each field as one 32-byte word: integers and addresses
    # left-padded with zeros, and the string as the Keccak-256 of its UTF-8 bytes.
    struct_hash = keccak256(
        b"".join(
            (
                COMMITMENT_TYPE_HASH,
                model_id.to_bytes(32, "big"),
                round.to_bytes(32, "big"),
                _ADDRESS_PADDING,
                _address_bytes(device, "device"),
                content_hash,
                keccak256(cid_bytes),
                sample_count.to_bytes(32, "big"),
                base_model_hash,
                nonce.to_bytes(32, "big"),
            )
        )
    )
    return keccak256(b"\x19\x01" + separator + struct_hash)


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


def _check_uint(value: int, bits: int, name: str) -> None:
    if not 0 <= value < 1 << bits:
        raise UsageError(
            f"{name} must be a uint{bits} (0 to 2**{bits} - 1), got {value}"
        )


def _address_bytes(address: str, name: str) -> bytes:
    """Return the 20 bytes of a 0x-prefixed hex address, in any letter case."""
    if len(address) == 42 and address.startswith("0x"):
        try:
            raw = bytes.fromhex(address[2:])
        except ValueError:
            raw = b""
        # bytes.fromhex skips spaces between bytes, so check the length it returns.
        if len(raw) == 20:
            return raw
    raise UsageError(
        f"{name} must be a 0x-prefixed address of 40 hex digits, got {address!r}"
    )
