"""Keccak-256 and secp256k1 public-key recovery with a low per-call cost.

The aggregator checks every relayed commitment with four Keccak-256 hashes of short
inputs and one public-key recovery, so the Python work around each C call matters.
Both functions here call the C libraries under eth-hash and coincurve directly, with
buffers allocated once per thread:

- :func:`keccak256` calls pycryptodome's Keccak library. ``eth_hash`` builds a new
  ``Keccak_Hash`` object on every call instead and takes 4.2 µs for 64 bytes,
  against 1.3 µs.
- :func:`recover_public_key` calls libsecp256k1 through coincurve's cffi module.
  ``coincurve.PublicKey.from_signature_and_message`` followed by ``format`` takes
  about 2 µs longer, out of about 33 µs.

The times are minima of interleaved timing loops on the 2-core Xeon that ran
``scripts/bench_verify.py``, with pycryptodome 3.24.1 on its ctypes backend and
coincurve 21.0.0.

NOTE: both C interfaces are internal to their packages. If one cannot be loaded or
fails its self-test at import, the function falls back to the package's public API
and logs a warning.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import coincurve
from eth_hash.auto import keccak as _eth_hash_keccak

log = logging.getLogger(__name__)

# --- Keccak-256 -------------------------------------------------------------------

# The declarations that pycryptodome's own Crypto/Hash/keccak.py loads the library with.
_KECCAK_CDECL = """
int keccak_init(void **state, size_t capacity_bytes, uint8_t rounds);
int keccak_destroy(void *state);
int keccak_absorb(void *state, const uint8_t *in, size_t len);
int keccak_digest(void *state, uint8_t *digest, size_t len, uint8_t padding);
int keccak_reset(void *state);
"""
# Keccak-256 has a capacity of 512 bits and 24 rounds, and it pads with 0x01. SHA3-256
# pads with 0x06, which is why hashlib.sha3_256 gives other digests.
_CAPACITY_BYTES = 64
_ROUNDS = 24
_PADDING = 0x01
_DIGEST_BYTES = 32
# Inputs shorter than this reuse a prebuilt size_t argument, which saves about
# 0.2 µs per call on the ctypes backend. A commitment struct is 288 bytes.
_PREBUILT_SIZES = 512

_EMPTY_DIGEST = bytes.fromhex(
    "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
)


def _eth_hash_keccak256(data: bytes) -> bytes:
    return _eth_hash_keccak(data)


def _load_direct_keccak() -> Callable[[bytes], bytes]:
    """Return a Keccak-256 function on pycryptodome's C library.

    Raises ImportError or OSError when the library cannot be loaded.
    """
    from Crypto.Util import _raw_api
    from Crypto.Util._raw_api import (
        SmartPointer,
        VoidPointer,
        c_size_t,
        create_string_buffer,
        get_raw_buffer,
        load_pycryptodome_raw_lib,
    )

    # Both backends of _raw_api define c_ubyte, but its type stub omits it.
    c_ubyte: Callable[[int], Any] = _raw_api.c_ubyte  # type: ignore[attr-defined]
    library: Any = load_pycryptodome_raw_lib("Crypto.Hash._keccak", _KECCAK_CDECL)
    reset = library.keccak_reset
    absorb = library.keccak_absorb
    squeeze = library.keccak_digest
    sizes = [c_size_t(size) for size in range(_PREBUILT_SIZES)]
    digest_size = c_size_t(_DIGEST_BYTES)
    padding = c_ubyte(_PADDING)

    class ThreadState(threading.local):
        """One hash state and output buffer per thread.

        ctypes and cffi release the GIL during every C call, so threads must not
        share them.
        """

        def __init__(self) -> None:
            pointer = VoidPointer()
            error = library.keccak_init(
                pointer.address_of(), c_size_t(_CAPACITY_BYTES), c_ubyte(_ROUNDS)
            )
            if error:
                raise OSError(f"keccak_init failed with error {error}")
            # The SmartPointer calls keccak_destroy when the thread's state is freed.
            self.owner = SmartPointer(pointer.get(), library.keccak_destroy)
            self.buffers = (self.owner.get(), create_string_buffer(_DIGEST_BYTES, None))

    thread_state = ThreadState()

    def keccak256(data: bytes) -> bytes:
        state, output = thread_state.buffers
        length = len(data)
        size = sizes[length] if length < _PREBUILT_SIZES else c_size_t(length)
        # Each C function returns 0 on success, so `or` stops at the first error.
        error = (
            reset(state)
            or absorb(state, data, size)
            or squeeze(state, output, digest_size, padding)
        )
        if error:
            raise OSError(f"pycryptodome's Keccak library failed with error {error}")
        return get_raw_buffer(output)

    return keccak256


def _select_keccak() -> Callable[[bytes], bytes]:
    try:
        direct = _load_direct_keccak()
        # An empty input, one byte short of the 136-byte rate, and several blocks.
        samples = [b"", bytes(range(135)), bytes(range(256)) * 3]
        matches = direct(b"") == _EMPTY_DIGEST and all(
            direct(sample) == _eth_hash_keccak(sample) for sample in samples
        )
    except (ImportError, OSError, AttributeError) as exc:
        log.warning(
            "pycryptodome's Keccak library could not be loaded (%s), so Keccak-256 "
            "falls back to eth_hash, which is slower for short inputs",
            exc,
        )
        return _eth_hash_keccak256
    if not matches:
        log.warning(
            "pycryptodome's Keccak library returned digests that differ from "
            "eth_hash, so Keccak-256 falls back to eth_hash"
        )
        return _eth_hash_keccak256
    return direct


#: Return the Keccak-256 digest (32 bytes) of ``data``, which must be ``bytes``.
keccak256: Callable[[bytes], bytes] = _select_keccak()

# --- secp256k1 public-key recovery ------------------------------------------------


def _invalid_arguments(digest: bytes, signature: bytes, recovery_id: int) -> ValueError:
    return ValueError(
        f"expected a 32-byte digest, a 64-byte signature and a recovery id of 0 or 1, "
        f"got {len(digest)} bytes, {len(signature)} bytes and {recovery_id}"
    )


def _coincurve_recover(digest: bytes, signature: bytes, recovery_id: int) -> bytes:
    if len(digest) != 32 or len(signature) != 64 or recovery_id not in (0, 1):
        raise _invalid_arguments(digest, signature, recovery_id)
    public_key = coincurve.PublicKey.from_signature_and_message(
        signature + bytes((recovery_id,)), digest, hasher=None
    )
    return public_key.format(compressed=False)[1:]


def _load_direct_recovery() -> Callable[[bytes, bytes, int], bytes]:
    """Return a recovery function on coincurve's cffi module for libsecp256k1.

    Raises ImportError or AttributeError when the module has another interface.
    """
    from coincurve._libsecp256k1 import ffi, lib
    from coincurve.context import GLOBAL_CONTEXT

    context = GLOBAL_CONTEXT.ctx
    uncompressed = lib.SECP256K1_EC_UNCOMPRESSED
    parse = lib.secp256k1_ecdsa_recoverable_signature_parse_compact
    recover = lib.secp256k1_ecdsa_recover
    serialize = lib.secp256k1_ec_pubkey_serialize
    buffer = ffi.buffer

    class ThreadBuffers(threading.local):
        """Output buffers of one thread, because cffi releases the GIL in C calls."""

        def __init__(self) -> None:
            self.buffers = (
                ffi.new("secp256k1_ecdsa_recoverable_signature *"),
                ffi.new("secp256k1_pubkey *"),
                ffi.new("unsigned char[65]"),
                ffi.new("size_t *"),
            )

    thread_buffers = ThreadBuffers()

    def recover_public_key(digest: bytes, signature: bytes, recovery_id: int) -> bytes:
        # libsecp256k1 reads exactly 32 and 64 bytes from these pointers.
        if len(digest) != 32 or len(signature) != 64 or recovery_id not in (0, 1):
            raise _invalid_arguments(digest, signature, recovery_id)
        parsed, public_key, output, output_length = thread_buffers.buffers
        if not parse(context, parsed, signature, recovery_id):
            raise ValueError("r or s is not below the secp256k1 group order")
        if not recover(context, public_key, parsed, digest):
            raise ValueError("no public key can be recovered from r and s")
        output_length[0] = 65
        serialize(context, output, output_length, public_key, uncompressed)
        # Skip the 0x04 prefix of the uncompressed encoding.
        key: bytes = buffer(output, 65)[1:]
        return key

    return recover_public_key


def _select_recovery() -> Callable[[bytes, bytes, int], bytes]:
    # A signature by private key 1, whose public key is the generator point G.
    digest = bytes(range(32))
    signature = coincurve.PrivateKey.from_int(1).sign_recoverable(digest, hasher=None)
    try:
        direct = _load_direct_recovery()
        matches = direct(digest, signature[:64], signature[64]) == _coincurve_recover(
            digest, signature[:64], signature[64]
        )
    except (ImportError, AttributeError, ValueError) as exc:
        log.warning(
            "coincurve's libsecp256k1 module could not be used (%s), so public-key "
            "recovery falls back to coincurve.PublicKey, which is slower",
            exc,
        )
        return _coincurve_recover
    if not matches:
        log.warning(
            "coincurve's libsecp256k1 module recovered another public key than "
            "coincurve.PublicKey, so public-key recovery falls back to it"
        )
        return _coincurve_recover
    return direct


#: Recover the 64-byte uncompressed public key (x || y) that signed a 32-byte digest,
#: from a 64-byte ``r || s`` signature and a recovery id of 0 or 1. Raises ValueError
#: when r or s is invalid or no public key can be recovered.
recover_public_key: Callable[[bytes, bytes, int], bytes] = _select_recovery()
