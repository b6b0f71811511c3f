"""CID computation and verification, identical to Kubo's ``ipfs add``.

Two flavours are supported, both with sha2-256, fixed 256 KiB chunks and a balanced
DAG of at most 174 links per node:

* CIDv0 (Kubo's defaults): dag-pb UnixFS leaves, CID in base58btc (``Qm...``).
* CIDv1 (``ipfs add --cid-version=1``): raw leaves, CID in base32 (``bafy...`` for
  a DAG, ``bafkrei...`` for content of one chunk or less).

The DAG encoding is done by the ``aleph-cid`` package (Rust), whose authors pin its
output against Kubo. The storage tests compare it with what js-ipfs 0.66 returns for
the same bytes, including a DAG of two levels (more than 174 chunks).
"""

from __future__ import annotations

import hashlib
from typing import Literal, Protocol

import aleph_cid
from multiformats import CID, multihash

from ztfm_chain.exceptions import ContentMismatch, UsageError

CidVersion = Literal[0, 1]

CID_VERSIONS: tuple[CidVersion, ...] = (0, 1)


class _Hasher(Protocol):
    def update(self, data: bytes) -> None: ...

    def finalize(self) -> str: ...


class _RawBlockHasher:
    """Hasher for a CIDv1 with the raw codec: sha2-256 of the bytes as one block."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._sha256.update(data)

    def finalize(self) -> str:
        digest = multihash.wrap(self._sha256.digest(), "sha2-256")
        return str(CID("base32", 1, "raw", digest))


def check_cid_version(cid_version: int) -> CidVersion:
    """Return ``cid_version`` typed as a CID version, or raise UsageError."""
    if cid_version == 0:
        return 0
    if cid_version == 1:
        return 1
    raise UsageError(f"invalid CID version {cid_version!r}: expected 0 or 1")


def _new_add_hasher(cid_version: CidVersion) -> _Hasher:
    if cid_version == 0:
        return aleph_cid.CidHasher.for_ipfs()
    return aleph_cid.CidHasher.for_ipfs_v1_raw_leaves()


def compute_cid(data: bytes, cid_version: CidVersion = 1) -> str:
    """Compute the CID that ``ipfs add [--cid-version=1]`` assigns to ``data``."""
    hasher = _new_add_hasher(check_cid_version(cid_version))
    hasher.update(data)
    return hasher.finalize()


#: Longest CID accepted; real CIDs of sha2-256 content are under 100 characters.
MAX_CID_LENGTH = 256


def _decode(cid: str) -> CID:
    if not isinstance(cid, str) or not 0 < len(cid) <= MAX_CID_LENGTH:
        shown = cid[:64] + "..." if isinstance(cid, str) and len(cid) > 64 else cid
        raise UsageError(
            f"invalid CID {shown!r}: expected a string of 1 to {MAX_CID_LENGTH} "
            "characters"
        )
    try:
        return CID.decode(cid)
    except Exception as err:
        raise UsageError(f"invalid CID {cid!r}: {err}") from err


def normalize_cid(cid: str) -> str:
    """Validate ``cid`` and return its canonical string.

    A CIDv0 is returned in base58btc and a CIDv1 in base32, whatever multibase the
    input used. Raises UsageError if ``cid`` is not a CID, or is one that this module
    cannot verify: a hash other than sha2-256, or a codec other than dag-pb and raw.
    """
    decoded = _decode(cid)
    if decoded.hashfun.name != "sha2-256":
        raise UsageError(
            f"unsupported CID {cid!r}: hash {decoded.hashfun.name} is not sha2-256"
        )
    if decoded.codec.name not in ("dag-pb", "raw"):
        raise UsageError(
            f"unsupported CID {cid!r}: codec {decoded.codec.name} is not dag-pb or raw"
        )
    if decoded.version == 0:
        return str(decoded)
    return decoded.encode("base32")


def cid_version_of(cid: str) -> CidVersion:
    """Return the version of a valid CID string."""
    return check_cid_version(_decode(cid).version)


class ContentVerifier:
    """Incremental check that a stream of bytes hashes to an expected CID.

    The expected CID chooses how the bytes are hashed: a CIDv0 as a Kubo-default
    DAG, a CIDv1 dag-pb as a ``--cid-version=1`` DAG with raw leaves, and a CIDv1
    raw as a single block. A CIDv1 DAG built with other settings (for example
    ``--raw-leaves=false`` or another chunker) cannot be verified and fails as a
    mismatch.
    """

    def __init__(self, cid: str) -> None:
        self.expected = normalize_cid(cid)
        decoded = _decode(self.expected)
        self._hasher: _Hasher
        if decoded.version == 0:
            self._hasher = _new_add_hasher(0)
        elif decoded.codec.name == "raw":
            self._hasher = _RawBlockHasher()
        else:
            self._hasher = _new_add_hasher(1)
        self.size = 0

    def update(self, data: bytes) -> None:
        self._hasher.update(data)
        self.size += len(data)

    def verify(self, source: str) -> None:
        """Raise ContentMismatch unless the bytes fed so far hash to the CID.

        ``source`` names where the bytes came from, for the error message.
        """
        computed = self._hasher.finalize()
        if computed != self.expected:
            raise ContentMismatch(
                f"content from {source} does not match CID {self.expected}: "
                f"its {self.size} bytes hash to {computed}"
            )


def verify_content(data: bytes, cid: str, source: str) -> None:
    """Raise ContentMismatch unless ``data`` hashes to ``cid``."""
    verifier = ContentVerifier(cid)
    verifier.update(data)
    verifier.verify(source)
