"""open_store picks the backend; default_store_location reads the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztfm_chain.exceptions import ConfigError
from ztfm_chain.storage import (
    EmbeddedStore,
    KuboStore,
    default_store_location,
    open_store,
)

from .helpers import HELLO, HELLO_CID_V0


def test_open_store_path_is_embedded(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    assert isinstance(store, EmbeddedStore)
    assert store.root == tmp_path / "store"
    assert store.cid_version == 1


def test_open_store_file_url_is_embedded(tmp_path: Path) -> None:
    root = tmp_path / "with space"
    store = open_store(f"file://{str(root).replace(' ', '%20')}")
    assert isinstance(store, EmbeddedStore)
    assert store.root == root


def test_open_store_passes_settings(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), cid_version=0, max_object_size=123)
    assert store.cid_version == 0
    assert store.max_object_size == 123
    assert store.put(HELLO) == HELLO_CID_V0


def test_open_store_expands_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    store = open_store("~/store")
    assert isinstance(store, EmbeddedStore)
    assert store.root == tmp_path / "store"


@pytest.mark.parametrize(
    ("location", "api_addr"),
    [
        ("/ip4/127.0.0.1/tcp/5001/http", "/ip4/127.0.0.1/tcp/5001/http"),
        ("/ip6/::1/tcp/5001/http", "/ip6/::1/tcp/5001/http"),
        ("/dns/localhost/tcp/5001/http", "/dns/localhost/tcp/5001/http"),
        ("http://127.0.0.1:5001", "/ip4/127.0.0.1/tcp/5001/http"),
        ("https://127.0.0.1:5001", "/ip4/127.0.0.1/tcp/5001/https"),
    ],
    ids=["ip4", "ip6", "dns", "http", "https"],
)
def test_open_store_address_is_kubo(location: str, api_addr: str) -> None:
    store = open_store(location, cid_version=0, timeout=5, retries=1)
    assert isinstance(store, KuboStore)
    assert store.api_addr == api_addr
    assert store.cid_version == 0
    assert store.timeout == 5
    assert store.retries == 1


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("", "invalid store location ''"),
        ("s3://bucket/store", "scheme 's3' is not supported"),
        ("file://otherhost/store", "must name a local path"),
    ],
    ids=["empty", "s3", "remote-file-url"],
)
def test_open_store_rejects_invalid(location: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_store(location)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, str(Path("~/.ztfm/store").expanduser())),
        ({"ZTFM_HOME": "/srv/ztfm"}, "/srv/ztfm/store"),
        ({"ZTFM_STORE": "/data/objects"}, "/data/objects"),
        (
            {"ZTFM_HOME": "/srv/ztfm", "ZTFM_STORE": "http://127.0.0.1:5001"},
            "http://127.0.0.1:5001",
        ),
        ({"ZTFM_HOME": "", "ZTFM_STORE": ""}, str(Path("~/.ztfm/store").expanduser())),
    ],
    ids=["defaults", "ztfm-home", "ztfm-store", "store-over-home", "empty-values"],
)
def test_default_store_location_precedence(
    environ: dict[str, str], expected: str
) -> None:
    assert default_store_location(environ) == expected
