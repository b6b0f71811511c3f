"""KuboStore against a js-ipfs daemon, a lying node and an unreachable node."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import ipfshttpclient
import pytest

from ztfm_chain.exceptions import (
    ConfigError,
    ContentMismatch,
    ContentUnavailable,
    ObjectTooLarge,
    StorageError,
    UsageError,
)
from ztfm_chain.storage import EmbeddedStore, KuboStore, compute_cid
from ztfm_chain.storage.cid import CidVersion
from ztfm_chain.storage.kubo import DEFAULT_KUBO_API, to_multiaddr

from .conftest import FakeNode
from .helpers import (
    CHUNK,
    HELLO,
    HELLO_CID_V0,
    HELLO_CID_V1,
    IPFSHTTPCLIENT_WARNING,
    MAX_LINKS,
    make_bytes,
)

pytestmark = pytest.mark.filterwarnings(IPFSHTTPCLIENT_WARNING)

# A CID that no test adds, so the daemon never has it.
ABSENT_CID = compute_cid(b"absent from every store in these tests", 1)


def _is_pinned(api: str, cid: str) -> bool:
    with ipfshttpclient.Client(api, timeout=10) as client:
        try:
            client.pin.ls(cid, type="recursive")
        except ipfshttpclient.exceptions.ErrorResponse as err:
            assert "not pinned" in str(err)
            return False
    return True


@pytest.mark.parametrize(
    ("cid_version", "expected"),
    [(0, HELLO_CID_V0), (1, HELLO_CID_V1)],
    ids=["v0", "v1"],
)
def test_kubo_put_returns_kubo_cid(
    ipfs_api: str, cid_version: CidVersion, expected: str
) -> None:
    with KuboStore(ipfs_api, cid_version=cid_version) as store:
        assert store.put(HELLO) == expected
        assert store.get(expected) == HELLO


@pytest.mark.parametrize(
    "size",
    [0, CHUNK + 1, 300 * 1024, 1024 * 1024],
    ids=["empty", "chunk+1", "300-KiB", "1-MiB"],
)
@pytest.mark.parametrize("cid_version", [0, 1], ids=["v0", "v1"])
def test_kubo_agrees_with_embedded(
    ipfs_api: str, tmp_path: Path, cid_version: CidVersion, size: int
) -> None:
    data = make_bytes(size)
    embedded = EmbeddedStore(tmp_path, cid_version=cid_version)
    with KuboStore(ipfs_api, cid_version=cid_version) as kubo:
        cid = kubo.put(data)
        assert cid == embedded.put(data)
        assert kubo.get(cid) == data
    assert embedded.get(cid) == data


@pytest.mark.parametrize("cid_version", [0, 1], ids=["v0", "v1"])
def test_kubo_two_level_dag_round_trip(ipfs_api: str, cid_version: CidVersion) -> None:
    data = make_bytes(MAX_LINKS * CHUNK + 1)
    with KuboStore(ipfs_api, cid_version=cid_version, timeout=60) as store:
        cid = store.put(data)
        assert cid == compute_cid(data, cid_version)
        assert store.get(cid) == data
        assert store.has(cid)


def test_kubo_get_reads_other_version(ipfs_api: str) -> None:
    with KuboStore(ipfs_api, cid_version=0) as v0, KuboStore(ipfs_api) as v1:
        v0.put(HELLO)
        assert v1.get(HELLO_CID_V0) == HELLO


def test_kubo_has_pin_unpin(ipfs_api: str) -> None:
    data = b"pin and unpin on the daemon"
    with KuboStore(ipfs_api, has_timeout=0.5) as store:
        cid = store.put(data)
        assert store.has(cid)
        assert _is_pinned(ipfs_api, cid)
        store.unpin(cid)
        assert not _is_pinned(ipfs_api, cid)
        store.unpin(cid)
        store.pin(cid)
        assert _is_pinned(ipfs_api, cid)


def test_kubo_has_absent_is_false(ipfs_api: str) -> None:
    with KuboStore(ipfs_api, has_timeout=0.5) as store:
        assert not store.has(ABSENT_CID)


def test_kubo_get_absent_is_unavailable(ipfs_api: str) -> None:
    with (
        KuboStore(ipfs_api, timeout=0.5, retries=0) as store,
        pytest.raises(ContentUnavailable, match="timed out") as raised,
    ):
        store.get(ABSENT_CID)
    assert ABSENT_CID in str(raised.value)


def test_kubo_pin_absent_is_unavailable(ipfs_api: str) -> None:
    with (
        KuboStore(ipfs_api, timeout=0.5, retries=0) as store,
        pytest.raises(ContentUnavailable, match="pin of CID") as raised,
    ):
        store.pin(ABSENT_CID)
    assert ABSENT_CID in str(raised.value)


def test_kubo_put_rejects_oversize_before_sending(closed_port_api: str) -> None:
    with (
        KuboStore(closed_port_api, max_object_size=100, retries=0) as store,
        pytest.raises(ObjectTooLarge, match="101 bytes"),
    ):
        store.put(make_bytes(101))


def test_kubo_get_rejects_oversize(ipfs_api: str) -> None:
    data = make_bytes(2 * CHUNK)
    with KuboStore(ipfs_api) as store:
        cid = store.put(data)
    with (
        KuboStore(ipfs_api, max_object_size=CHUNK) as small,
        pytest.raises(ObjectTooLarge, match=cid),
    ):
        small.get(cid)


@pytest.mark.parametrize("operation", ["get", "has", "pin", "unpin"])
def test_kubo_invalid_cid_is_usage_error(closed_port_api: str, operation: str) -> None:
    with (
        KuboStore(closed_port_api, retries=0) as store,
        pytest.raises(UsageError, match="invalid CID"),
    ):
        getattr(store, operation)("Qm-not-a-cid")


# --- a node that lies --------------------------------------------------------------


@pytest.mark.parametrize(
    ("cid", "served"),
    [
        (HELLO_CID_V1, b"hello world?"),
        (HELLO_CID_V0, b"hello world?"),
        (HELLO_CID_V1, b""),
        (HELLO_CID_V1, HELLO + b"\n"),
        (compute_cid(make_bytes(CHUNK + 1), 1), make_bytes(CHUNK + 1)[:-1] + b"x"),
    ],
    ids=["v1-other-bytes", "v0-other-bytes", "empty", "extra-byte", "dag-last-byte"],
)
def test_kubo_lying_cat_is_mismatch(
    fake_node: FakeNode, cid: str, served: bytes
) -> None:
    fake_node.cat_body = served
    with KuboStore(fake_node.api) as store, pytest.raises(ContentMismatch) as raised:
        store.get(cid)
    message = str(raised.value)
    assert cid in message
    assert compute_cid(served, 0 if cid.startswith("Qm") else 1) in message
    assert fake_node.api in message


def test_kubo_lying_add_is_mismatch(fake_node: FakeNode) -> None:
    fake_node.add_hash = HELLO_CID_V1
    data = b"not hello world"
    with KuboStore(fake_node.api) as store, pytest.raises(ContentMismatch) as raised:
        store.put(data)
    message = str(raised.value)
    assert HELLO_CID_V1 in message
    assert compute_cid(data, 1) in message


def test_kubo_add_requests_kubo_settings(fake_node: FakeNode) -> None:
    fake_node.add_hash = HELLO_CID_V1
    with KuboStore(fake_node.api) as store:
        assert store.put(HELLO) == HELLO_CID_V1
    path, query = fake_node.requests[-1]
    assert path == "/api/v0/add"
    assert query["cid-version"] == ["1"]
    assert query["raw-leaves"] == ["true"]
    assert query["cid-base"] == ["base32"]
    assert query["chunker"] == ["size-262144"]
    assert query["pin"] == ["true"]


def test_kubo_node_ignoring_length_is_cut_off(fake_node: FakeNode) -> None:
    fake_node.cat_body = make_bytes(10_000)
    with (
        KuboStore(fake_node.api, max_object_size=1000) as store,
        pytest.raises(ObjectTooLarge, match="max object size of 1000 bytes"),
    ):
        store.get(HELLO_CID_V1)
    path, query = fake_node.requests[-1]
    assert path == "/api/v0/cat"
    assert query["length"] == ["1001"]


def test_kubo_non_cid_answer_is_storage_error(fake_node: FakeNode) -> None:
    fake_node.add_hash = "not a CID"
    with (
        KuboStore(fake_node.api) as store,
        pytest.raises(StorageError, match="invalid CID 'not a CID'"),
    ):
        store.put(HELLO)


def test_kubo_slow_node_times_out_without_retry(fake_node: FakeNode) -> None:
    fake_node.delay = 1.0
    fake_node.cat_body = HELLO
    with (
        KuboStore(fake_node.api, timeout=0.2, retries=2) as store,
        pytest.raises(ContentUnavailable, match="timed out"),
    ):
        store.get(HELLO_CID_V1)
    assert len(fake_node.requests) == 1


def test_kubo_trickling_node_is_cut_off(fake_node: FakeNode) -> None:
    fake_node.trickle = 0.05
    fake_node.cat_body = make_bytes(200)
    with (
        KuboStore(fake_node.api, timeout=1.0, transfer_timeout=0.5) as store,
        pytest.raises(ContentUnavailable, match=r"took longer than 0\.5 s") as info,
    ):
        store.get(HELLO_CID_V1)
    # Each byte arrives within the read timeout, so only the whole-transfer limit
    # stops the read, long before the node has sent its 200 bytes.
    received = int(str(info.value).rsplit("after ", 1)[1].split()[0])
    assert received < 100


def test_kubo_trickled_single_chunk_is_cut_off(fake_node: FakeNode) -> None:
    fake_node.trickle = 0.05
    fake_node.chunked = True
    fake_node.cat_body = make_bytes(200)
    with (
        KuboStore(fake_node.api, timeout=1.0, transfer_timeout=0.5) as store,
        pytest.raises(ContentUnavailable, match=r"took longer than 0\.5 s") as info,
    ):
        store.get(HELLO_CID_V1)
    # The whole body is one HTTP chunk, so the deadline must apply within a chunk.
    received = int(str(info.value).rsplit("after ", 1)[1].split()[0])
    assert received < 100


def test_kubo_compressed_body_is_refused(fake_node: FakeNode) -> None:
    # 64 MiB of zeros compress to about 64 KB, past a 1 MiB limit once decoded.
    fake_node.cat_body = gzip.compress(bytes(64 << 20))
    fake_node.cat_headers = {"Content-Encoding": "gzip"}
    with (
        KuboStore(fake_node.api, max_object_size=1 << 20, retries=0) as store,
        pytest.raises(ContentUnavailable, match="Content-Encoding 'gzip'"),
    ):
        store.get(HELLO_CID_V1)
    path, _ = fake_node.requests[-1]
    assert path == "/api/v0/cat"


# --- a node that does not respond ---------------------------------------------------


def test_kubo_unreachable_get_retries_then_unavailable(
    closed_port_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ztfm_chain.storage.kubo")
    with (
        KuboStore(closed_port_api, retries=2, backoff=0.01) as store,
        pytest.raises(ContentUnavailable, match="unreachable") as raised,
    ):
        store.get(HELLO_CID_V1)
    message = str(raised.value)
    assert "after 3 attempts" in message
    assert "ConnectionRefusedError" in message
    assert closed_port_api in message
    retries = [r for r in caplog.records if r.getMessage().startswith("kubo_retry ")]
    assert len(retries) == 2


def test_kubo_unreachable_put_is_storage_error(closed_port_api: str) -> None:
    with (
        KuboStore(closed_port_api, retries=1, backoff=0.01) as store,
        pytest.raises(StorageError, match="after 2 attempts") as raised,
    ):
        store.put(HELLO)
    assert not isinstance(raised.value, ContentMismatch)


def test_kubo_unreachable_has_is_storage_error(closed_port_api: str) -> None:
    with (
        KuboStore(closed_port_api, retries=0) as store,
        pytest.raises(StorageError, match="failed to check CID"),
    ):
        store.has(HELLO_CID_V1)


# --- addresses and settings --------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/ip4/127.0.0.1/tcp/5001/http", "/ip4/127.0.0.1/tcp/5001/http"),
        ("http://127.0.0.1:5001", "/ip4/127.0.0.1/tcp/5001/http"),
        ("http://127.0.0.1:5001/", "/ip4/127.0.0.1/tcp/5001/http"),
        ("https://127.0.0.1:8443", "/ip4/127.0.0.1/tcp/8443/https"),
        ("http://[::1]:5001", "/ip6/::1/tcp/5001/http"),
        ("http://localhost:5001", "/dns/localhost/tcp/5001/http"),
        ("http://127.0.0.1", "/ip4/127.0.0.1/tcp/80/http"),
    ],
    ids=["multiaddr", "url", "url-slash", "https", "ipv6", "hostname", "no-port"],
)
def test_to_multiaddr_conversions(given: str, expected: str) -> None:
    assert to_multiaddr(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "ftp://127.0.0.1:5001",
        "http://127.0.0.1:5001/api/v0",
        "http://127.0.0.1:notaport",
        "127.0.0.1:5001",
    ],
    ids=["ftp", "path", "bad-port", "no-scheme"],
)
def test_to_multiaddr_rejects_invalid(given: str) -> None:
    with pytest.raises(ConfigError, match="invalid Kubo API"):
        to_multiaddr(given)


@pytest.mark.parametrize(
    "given",
    ["/ip4/127.0.0.1/udp/5001/http", "/ip4/999.0.0.1/tcp/5001/http", "/foo/bar"],
    ids=["udp", "bad-ip", "unknown-protocol"],
)
def test_kubo_rejects_invalid_multiaddr(given: str) -> None:
    with pytest.raises(ConfigError, match="invalid Kubo API multiaddr"):
        KuboStore(given)


def test_kubo_default_address_is_loopback() -> None:
    assert DEFAULT_KUBO_API == "/ip4/127.0.0.1/tcp/5001/http"
    with KuboStore() as store:
        assert store.api_addr == DEFAULT_KUBO_API


@pytest.mark.parametrize(
    "settings",
    [
        {"timeout": 0},
        {"has_timeout": -1},
        {"transfer_timeout": 0},
        {"retries": -1},
        {"backoff": -0.5},
    ],
    ids=["timeout", "has-timeout", "transfer-timeout", "retries", "backoff"],
)
def test_kubo_rejects_bad_settings(settings: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        KuboStore(DEFAULT_KUBO_API, **settings)  # type: ignore[arg-type]
