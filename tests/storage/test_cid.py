"""CID computation against known values and against a running js-ipfs daemon."""

from __future__ import annotations

import hashlib

import ipfshttpclient
import pytest
from multiformats import CID, multihash

from ztfm_chain.exceptions import ContentMismatch, UsageError
from ztfm_chain.storage.cid import (
    CidVersion,
    ContentVerifier,
    cid_version_of,
    compute_cid,
    normalize_cid,
    verify_content,
)

from .helpers import (
    CHUNK,
    HELLO,
    HELLO_CID_V0,
    HELLO_CID_V1,
    IPFSHTTPCLIENT_WARNING,
    MAX_LINKS,
    make_bytes,
)

# CIDs that js-ipfs 0.66.1 returned for make_bytes(size), with `ipfs add` defaults
# (v0) and with --cid-version=1 (raw leaves, base32).
GOLDEN = {
    "empty": (
        0,
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    ),
    "one-chunk": (
        CHUNK,
        "Qmbd9VNLTfpBW2arj1AkAJnVRYBq1WEY6Uu6wLEiemGipi",
        "bafkreih2bk74eu5axngebs6vftmmkcaqboysjjy726xzy5hksnqmfgw5fy",
    ),
    "one-chunk-plus-one-byte": (
        CHUNK + 1,
        "QmdkAszdeWKht9nXSzPKGUYvUqpMfm325GuCn1pZnTa9ja",
        "bafybeidbbs6ocod3v27jtr4uhvc6n55y3gbrtur3bvjsnraudtbxkozi2y",
    ),
    "300-KiB": (
        300 * 1024,
        "QmZ8u8B7QyESYxvHnS44vZtvoGS9voPiG9NPVjfpuPZn46",
        "bafybeihzon7mcfadzxq6cv6v6m5yh3qo3oloqdw2auamcx5s2rsdyq5ud4",
    ),
    "1-MiB": (
        1024 * 1024,
        "QmcZSDJuXeCkUq2BQyEwNZW5F4x5FxzQNUuav8XyceEBsS",
        "bafybeigxrbq7fuchvgd6onff4gbsw5a2p2723maltvtkbglz3l5sak37gm",
    ),
    "174-chunks-one-level": (
        MAX_LINKS * CHUNK,
        "QmNWRuH9CkAYPi3Gf99g1nB74Cw3y5NuPKohRs7KX2KsJz",
        "bafybeih3ebhydpblov22wbakszm4spvku7hbo3oa5gdhgoh7gnub26mtx4",
    ),
    "175-chunks-two-levels": (
        MAX_LINKS * CHUNK + 1,
        "QmWvAUzQsaCFMPzTTFKwGmTmijHZ5aVRwJqGwrSHF89cuy",
        "bafybeidsyc3rx6lmbjml2fg4ucagkjh3kse6tbphoyyhms46fqhmu6ujbi",
    ),
}

# Sizes added to the daemon in the tests; the 174-chunk case is left to GOLDEN.
DAEMON_SIZES = {
    name: size
    for name, (size, _, _) in GOLDEN.items()
    if name != "174-chunks-one-level"
}


def _cid_from_digest(version: int, codec: str, data: bytes) -> str:
    digest = multihash.wrap(hashlib.sha256(data).digest(), "sha2-256")
    base = "base58btc" if version == 0 else "base32"
    return str(CID(base, version, codec, digest))


@pytest.mark.parametrize(
    ("cid_version", "expected"),
    [(0, HELLO_CID_V0), (1, HELLO_CID_V1)],
    ids=["v0-defaults", "v1-raw-leaves"],
)
def test_compute_cid_hello_world(cid_version: CidVersion, expected: str) -> None:
    assert compute_cid(HELLO, cid_version) == expected


@pytest.mark.parametrize("name", list(GOLDEN), ids=list(GOLDEN))
def test_compute_cid_matches_golden(name: str) -> None:
    size, cid_v0, cid_v1 = GOLDEN[name]
    data = make_bytes(size)
    assert compute_cid(data, 0) == cid_v0
    assert compute_cid(data, 1) == cid_v1


def test_compute_cid_single_chunk_v1_is_raw_block() -> None:
    data = make_bytes(CHUNK)
    assert compute_cid(data, 1) == _cid_from_digest(1, "raw", data)


def test_compute_cid_rejects_bad_version() -> None:
    with pytest.raises(UsageError, match="invalid CID version 2"):
        compute_cid(HELLO, 2)  # type: ignore[arg-type]


@pytest.mark.filterwarnings(IPFSHTTPCLIENT_WARNING)
@pytest.mark.parametrize("cid_version", [0, 1], ids=["v0", "v1"])
@pytest.mark.parametrize("name", list(DAEMON_SIZES), ids=list(DAEMON_SIZES))
def test_compute_cid_matches_daemon(
    ipfs_api: str, name: str, cid_version: CidVersion
) -> None:
    data = make_bytes(DAEMON_SIZES[name])
    options = {"cid-version": str(cid_version), "pin": "false"}
    if cid_version == 1:
        options.update({"raw-leaves": "true", "cid-base": "base32"})
    with ipfshttpclient.Client(ipfs_api, timeout=60) as client:
        daemon_cid = client.add_bytes(data, opts=options)
    assert compute_cid(data, cid_version) == daemon_cid


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (HELLO_CID_V0, HELLO_CID_V0),
        (HELLO_CID_V1, HELLO_CID_V1),
        ("zb2rhi36Gc9GJWijLEL6zW45MBux5FcFv5gJmjXA7VAMozEXY", HELLO_CID_V1),
        (HELLO_CID_V1.upper(), HELLO_CID_V1),
    ],
    ids=["v0", "v1-base32", "v1-base58btc", "v1-base32-upper"],
)
def test_normalize_cid_canonical_form(given: str, expected: str) -> None:
    assert normalize_cid(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "invalid CID"),
        ("hello", "invalid CID"),
        (HELLO_CID_V0[:-1], "invalid CID"),
        (HELLO_CID_V1[:-2], "invalid CID"),
        (
            str(CID("base32", 1, "raw", multihash.digest(HELLO, "sha2-512"))),
            "hash sha2-512 is not sha2-256",
        ),
        (
            str(CID("base32", 1, "dag-cbor", multihash.digest(HELLO, "sha2-256"))),
            "codec dag-cbor is not dag-pb or raw",
        ),
    ],
    ids=["empty", "not-base32", "v0-truncated", "v1-truncated", "sha512", "dag-cbor"],
)
def test_normalize_cid_rejects_invalid(given: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        normalize_cid(given)


def test_cid_version_of_each_version() -> None:
    assert cid_version_of(HELLO_CID_V0) == 0
    assert cid_version_of(HELLO_CID_V1) == 1


@pytest.mark.parametrize("cid_version", [0, 1], ids=["v0", "v1"])
def test_content_verifier_accepts_any_chunking(cid_version: CidVersion) -> None:
    data = make_bytes(3 * CHUNK + 12345)
    verifier = ContentVerifier(compute_cid(data, cid_version))
    offset = 0
    for size in (1, 7, CHUNK - 1, CHUNK + 3, 100_000, len(data)):
        verifier.update(data[offset : offset + size])
        offset += size
    assert verifier.size == len(data)
    verifier.verify(source="test")


def test_content_verifier_raw_cid_of_large_block() -> None:
    data = make_bytes(CHUNK + 1)
    raw_cid = _cid_from_digest(1, "raw", data)
    verify_content(data, raw_cid, source="test")


@pytest.mark.parametrize(
    "cid",
    [HELLO_CID_V0, HELLO_CID_V1, compute_cid(make_bytes(CHUNK + 1), 1)],
    ids=["v0", "v1-raw", "v1-dag-pb"],
)
def test_verify_content_mismatch_names_both_cids(cid: str) -> None:
    other = b"hello world?"
    with pytest.raises(ContentMismatch) as raised:
        verify_content(other, cid, source="node X")
    message = str(raised.value)
    assert cid in message
    assert "node X" in message
    assert "12 bytes hash to " in message


def test_verify_content_mismatch_reports_computed_cid() -> None:
    with pytest.raises(ContentMismatch) as raised:
        verify_content(b"hello world?", HELLO_CID_V1, source="test")
    assert compute_cid(b"hello world?", 1) in str(raised.value)
