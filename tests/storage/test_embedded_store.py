"""EmbeddedStore: round trips, verification, size limits, pins, gc and crashes."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ztfm_chain.exceptions import (
    ConfigError,
    ContentMismatch,
    ContentUnavailable,
    ObjectTooLarge,
    StorageError,
    UsageError,
)
from ztfm_chain.storage import EmbeddedStore, compute_cid
from ztfm_chain.storage.cid import CidVersion
from ztfm_chain.storage.embedded import TEMP_PREFIX

from .helpers import CHUNK, HELLO, HELLO_CID_V0, HELLO_CID_V1, make_bytes


def _files_under(root: Path) -> list[str]:
    return sorted(
        str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()
    )


def _temp_files(root: Path) -> list[Path]:
    return [path for path in root.rglob(f"{TEMP_PREFIX}*")]


@pytest.mark.parametrize(
    ("cid_version", "expected"),
    [(0, HELLO_CID_V0), (1, HELLO_CID_V1)],
    ids=["v0", "v1"],
)
def test_embedded_put_returns_kubo_cid(
    tmp_path: Path, cid_version: CidVersion, expected: str
) -> None:
    store = EmbeddedStore(tmp_path, cid_version=cid_version)
    assert store.put(HELLO) == expected
    assert store.get(expected) == HELLO


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK],
    ids=["0", "1", "chunk", "chunk+1", "3-chunks"],
)
@pytest.mark.parametrize("cid_version", [0, 1], ids=["v0", "v1"])
def test_embedded_round_trip(
    tmp_path: Path, cid_version: CidVersion, size: int
) -> None:
    store = EmbeddedStore(tmp_path, cid_version=cid_version)
    data = make_bytes(size)
    cid = store.put(data)
    assert cid == compute_cid(data, cid_version)
    assert store.has(cid)
    assert store.get(cid) == data


def test_embedded_put_twice_keeps_one_object(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    first = store.put(HELLO)
    second = store.put(HELLO)
    assert first == second
    assert _files_under(tmp_path / "objects") == [
        str(store.object_path(first).relative_to(tmp_path / "objects"))
    ]
    assert _temp_files(tmp_path) == []


def test_embedded_get_accepts_other_multibase(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    store.put(HELLO)
    assert store.get("zb2rhi36Gc9GJWijLEL6zW45MBux5FcFv5gJmjXA7VAMozEXY") == HELLO


def test_embedded_get_missing_is_unavailable(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    with pytest.raises(ContentUnavailable, match=HELLO_CID_V1):
        store.get(HELLO_CID_V1)
    assert not store.has(HELLO_CID_V1)


def test_embedded_get_other_version_is_unavailable(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, cid_version=1)
    store.put(HELLO)
    with pytest.raises(ContentUnavailable):
        store.get(HELLO_CID_V0)


@pytest.mark.parametrize(
    "operation", ["get", "has", "pin", "unpin"], ids=["get", "has", "pin", "unpin"]
)
def test_embedded_invalid_cid_is_usage_error(tmp_path: Path, operation: str) -> None:
    store = EmbeddedStore(tmp_path)
    with pytest.raises(UsageError, match="invalid CID 'not-a-cid'"):
        getattr(store, operation)("not-a-cid")


@pytest.mark.parametrize(
    "tamper",
    ["flip-byte", "truncate", "append", "replace-with-other-object"],
    ids=["flip-byte", "truncate", "append", "replace-with-other-object"],
)
def test_embedded_get_detects_tampering(tmp_path: Path, tamper: str) -> None:
    store = EmbeddedStore(tmp_path)
    data = make_bytes(CHUNK + 100)
    cid = store.put(data)
    path = store.object_path(cid)
    if tamper == "flip-byte":
        damaged = bytearray(data)
        damaged[CHUNK + 5] ^= 0x01
        path.write_bytes(bytes(damaged))
    elif tamper == "truncate":
        path.write_bytes(data[:-1])
    elif tamper == "append":
        path.write_bytes(data + b"\0")
    else:
        path.write_bytes(HELLO)
    with pytest.raises(ContentMismatch) as raised:
        store.get(cid)
    message = str(raised.value)
    assert cid in message
    assert str(path) in message


def test_embedded_put_repairs_tampered_object(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    cid = store.put(HELLO)
    store.object_path(cid).write_bytes(b"jello world\n")
    store.put(HELLO)
    assert store.get(cid) == HELLO


def test_embedded_put_rejects_oversize(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, max_object_size=1000)
    with pytest.raises(ObjectTooLarge, match="1001 bytes"):
        store.put(make_bytes(1001))
    assert _files_under(tmp_path / "objects") == []
    assert store.list_pins() == []


def test_embedded_put_accepts_exact_limit(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, max_object_size=1000)
    data = make_bytes(1000)
    assert store.get(store.put(data)) == data


def test_embedded_get_rejects_oversize(tmp_path: Path) -> None:
    cid = EmbeddedStore(tmp_path).put(make_bytes(5000))
    small = EmbeddedStore(tmp_path, max_object_size=4999)
    with pytest.raises(ObjectTooLarge, match="5000 bytes"):
        small.get(cid)


@pytest.mark.parametrize("max_object_size", [0, -1], ids=["zero", "negative"])
def test_embedded_rejects_bad_limit(tmp_path: Path, max_object_size: int) -> None:
    with pytest.raises(UsageError, match="max object size"):
        EmbeddedStore(tmp_path, max_object_size=max_object_size)


def test_embedded_rejects_bad_cid_version(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="CID version 3"):
        EmbeddedStore(tmp_path, cid_version=3)


def test_embedded_root_is_file_is_config_error(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.write_text("not a directory")
    with pytest.raises(ConfigError, match="not a directory"):
        EmbeddedStore(root)


def test_embedded_put_pins(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    cid = store.put(HELLO)
    assert store.list_pins() == [cid]
    assert store.gc() == []
    assert store.get(cid) == HELLO


def test_embedded_gc_removes_only_unpinned(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    pinned = store.put(b"kept")
    dropped = store.put(b"dropped")
    store.unpin(dropped)
    assert store.list_pins() == [pinned]
    assert store.has(dropped)
    assert store.gc() == [dropped]
    assert not store.has(dropped)
    assert store.has(pinned)
    with pytest.raises(ContentUnavailable):
        store.get(dropped)
    assert store.gc() == []


def test_embedded_pin_again_survives_gc(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    cid = store.put(HELLO)
    store.unpin(cid)
    store.pin(cid)
    assert store.gc() == []
    assert store.get(cid) == HELLO


def test_embedded_pins_persist_across_instances(tmp_path: Path) -> None:
    cid = EmbeddedStore(tmp_path).put(HELLO)
    reopened = EmbeddedStore(tmp_path)
    assert reopened.list_pins() == [cid]
    assert reopened.gc() == []


def test_embedded_unpin_unknown_is_noop(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    store.unpin(HELLO_CID_V1)
    assert store.list_pins() == []


def test_embedded_pin_missing_is_unavailable(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    with pytest.raises(ContentUnavailable, match=HELLO_CID_V1):
        store.pin(HELLO_CID_V1)
    assert store.list_pins() == []


def test_embedded_gc_removes_temp_files(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    cid = store.put(HELLO)
    leftover = store.object_path(cid).parent / f"{TEMP_PREFIX}leftover"
    leftover.write_bytes(b"partial")
    assert store.gc() == []
    assert not leftover.exists()
    assert store.get(cid) == HELLO


# A child process writes an object under RLIMIT_FSIZE, so the write fails for real
# partway through: with SIGXFSZ ignored the write raises EFBIG, with the default
# action the kernel kills the process mid-write, as a crash would.
_LIMITED_WRITER = textwrap.dedent(
    """
    import random, resource, signal, sys
    from pathlib import Path
    from ztfm_chain.exceptions import StorageError
    from ztfm_chain.storage import EmbeddedStore

    store = EmbeddedStore(Path(sys.argv[1]))
    data = random.Random(0).randbytes(int(sys.argv[2]))
    action = signal.SIG_IGN if sys.argv[3] == "error" else signal.SIG_DFL
    signal.signal(signal.SIGXFSZ, action)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    try:
        store.put(data)
    except StorageError as err:
        print("StorageError:", err)
        sys.exit(0)
    print("stored")
    """
)

_LIMITED_SIZE = 300_000


def _run_limited_writer(root: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _LIMITED_WRITER, str(root), str(_LIMITED_SIZE), mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _limited_cid() -> str:
    return compute_cid(random.Random(0).randbytes(_LIMITED_SIZE), 1)


def test_embedded_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    result = _run_limited_writer(tmp_path, "error")
    assert result.returncode == 0, result.stderr
    assert "StorageError: failed to write object" in result.stdout
    assert "File too large" in result.stdout
    assert _temp_files(tmp_path) == []
    store = EmbeddedStore(tmp_path)
    assert not store.has(_limited_cid())
    assert store.list_pins() == []


def test_embedded_crash_mid_write_leaves_no_object(tmp_path: Path) -> None:
    result = _run_limited_writer(tmp_path, "crash")
    assert result.returncode == -signal.SIGXFSZ, result.stderr
    leftovers = _temp_files(tmp_path)
    assert len(leftovers) == 1
    assert leftovers[0].stat().st_size == 100_000
    store = EmbeddedStore(tmp_path)
    cid = _limited_cid()
    assert not store.has(cid)
    assert not store.object_path(cid).exists()
    with pytest.raises(ContentUnavailable):
        store.get(cid)
    assert store.gc() == []
    assert _temp_files(tmp_path) == []


def test_embedded_store_error_wraps_os_error(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    cid = store.put(HELLO)
    path = store.object_path(cid)
    path.unlink()
    path.mkdir()
    with pytest.raises(StorageError, match="failed to read object"):
        store.get(cid)
