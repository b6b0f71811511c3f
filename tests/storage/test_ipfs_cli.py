"""``ztfm ipfs add`` and ``ztfm ipfs cat``, run on the ``ipfs`` sub-app by CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from ztfm_chain.cli.ipfs import app
from ztfm_chain.cli.main import app as main_app
from ztfm_chain.storage import EmbeddedStore, compute_cid

from .helpers import HELLO, HELLO_CID_V0, HELLO_CID_V1, IPFSHTTPCLIENT_WARNING

ALL_BYTES = bytes(range(256)) * 3


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner whose default store is under tmp_path, never under ~/.ztfm."""
    monkeypatch.setenv("ZTFM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ZTFM_STORE", raising=False)
    return CliRunner()


def _write(tmp_path: Path, data: bytes, name: str = "input.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _assert_one_line_error(result: Result, exit_code: int, *fragments: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], HELLO_CID_V1),
        (["--cid-version", "1"], HELLO_CID_V1),
        (["--cid-version", "0"], HELLO_CID_V0),
    ],
    ids=["default-v1", "v1", "v0"],
)
def test_ipfs_add_prints_cid_alone(
    runner: CliRunner, tmp_path: Path, options: list[str], expected: str
) -> None:
    path = _write(tmp_path, HELLO)
    store = tmp_path / "store"
    result = runner.invoke(app, ["add", str(path), "--store", str(store), *options])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{expected}\n"
    assert result.stderr == ""
    assert EmbeddedStore(store).get(expected) == HELLO


def test_ipfs_add_reads_stdin(runner: CliRunner, tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = runner.invoke(app, ["add", "-", "--store", str(store)], input=HELLO)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{HELLO_CID_V1}\n"


def test_ipfs_cat_is_binary_safe(runner: CliRunner, tmp_path: Path) -> None:
    store = tmp_path / "store"
    cid = EmbeddedStore(store).put(ALL_BYTES)
    result = runner.invoke(app, ["cat", cid, "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == ALL_BYTES


def test_ipfs_add_then_cat_default_store(runner: CliRunner, tmp_path: Path) -> None:
    path = _write(tmp_path, ALL_BYTES)
    added = runner.invoke(app, ["add", str(path)])
    assert added.exit_code == 0, added.output
    cid = added.stdout.strip()
    assert EmbeddedStore(tmp_path / "home" / "store").has(cid)
    read_back = runner.invoke(app, ["cat", cid])
    assert read_back.exit_code == 0, read_back.output
    assert read_back.stdout_bytes == ALL_BYTES


def test_ipfs_store_from_environment(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "from-env"
    monkeypatch.setenv("ZTFM_STORE", str(store))
    result = runner.invoke(app, ["add", str(_write(tmp_path, HELLO))])
    assert result.exit_code == 0, result.output
    assert EmbeddedStore(store).has(HELLO_CID_V1)
    assert not (tmp_path / "home" / "store").exists()


def test_ipfs_store_option_over_environment(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZTFM_STORE", str(tmp_path / "from-env"))
    store = tmp_path / "from-option"
    path = _write(tmp_path, HELLO)
    result = runner.invoke(app, ["add", str(path), "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert EmbeddedStore(store).has(HELLO_CID_V1)
    assert not (tmp_path / "from-env").exists()


# --- usage errors: exit code 2 -----------------------------------------------------


def test_ipfs_add_missing_file_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "missing.bin"
    result = runner.invoke(app, ["add", str(missing)])
    _assert_one_line_error(result, 2, "input file not found", str(missing))


def test_ipfs_add_directory_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["add", str(tmp_path)])
    _assert_one_line_error(result, 2, "is a directory", str(tmp_path))


@pytest.mark.parametrize("value", ["2", "x", "-1"], ids=["two", "letter", "negative"])
def test_ipfs_add_bad_cid_version_exits_2(
    runner: CliRunner, tmp_path: Path, value: str
) -> None:
    path = _write(tmp_path, HELLO)
    result = runner.invoke(app, ["add", str(path), "--cid-version", value])
    _assert_one_line_error(result, 2, "invalid --cid-version", repr(value))


def test_ipfs_cat_invalid_cid_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["cat", "Qm-not-a-cid"])
    _assert_one_line_error(result, 2, "invalid CID", "'Qm-not-a-cid'")


def test_ipfs_bad_store_url_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["cat", HELLO_CID_V1, "--store", "s3://bucket"])
    _assert_one_line_error(result, 2, "invalid store URL", "'s3://bucket'")


# --- storage errors: exit code 3 ---------------------------------------------------


def test_ipfs_cat_unknown_cid_exits_3(runner: CliRunner, tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = runner.invoke(app, ["cat", HELLO_CID_V1, "--store", str(store)])
    _assert_one_line_error(result, 3, "not found", HELLO_CID_V1)


def test_ipfs_cat_tampered_exits_3(runner: CliRunner, tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "store")
    cid = store.put(HELLO)
    store.object_path(cid).write_bytes(b"jello world\n")
    result = runner.invoke(app, ["cat", cid, "--store", str(store.root)])
    _assert_one_line_error(
        result, 3, "does not match CID", cid, compute_cid(b"jello world\n", 1)
    )


@pytest.mark.filterwarnings(IPFSHTTPCLIENT_WARNING)
def test_ipfs_unreachable_node_exits_3(runner: CliRunner, closed_port_api: str) -> None:
    result = runner.invoke(app, ["cat", HELLO_CID_V1, "--store", closed_port_api])
    _assert_one_line_error(result, 3, "unreachable", closed_port_api)


# --- a Kubo RPC API as the store -----------------------------------------------------


@pytest.mark.filterwarnings(IPFSHTTPCLIENT_WARNING)
@pytest.mark.parametrize("cid_version", ["0", "1"], ids=["v0", "v1"])
def test_ipfs_add_cat_via_daemon(
    runner: CliRunner, tmp_path: Path, ipfs_api: str, cid_version: str
) -> None:
    path = _write(tmp_path, ALL_BYTES)
    added = runner.invoke(
        app,
        ["add", str(path), "--cid-version", cid_version, "--store", ipfs_api],
    )
    assert added.exit_code == 0, added.output
    cid = added.stdout.strip()
    assert cid == compute_cid(ALL_BYTES, 0 if cid_version == "0" else 1)
    read_back = runner.invoke(app, ["cat", cid, "--store", ipfs_api])
    assert read_back.exit_code == 0, read_back.output
    assert read_back.stdout_bytes == ALL_BYTES


def test_ipfs_help_documents_exit_codes(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "2 usage error" in text
    assert "3 storage error" in text


def test_ipfs_follows_global_store_option(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZTFM_STORE", str(tmp_path / "from-env"))
    store = tmp_path / "global"
    path = _write(tmp_path, HELLO)
    added = runner.invoke(main_app, ["--store", str(store), "ipfs", "add", str(path)])
    assert added.exit_code == 0, added.output
    assert EmbeddedStore(store).has(HELLO_CID_V1)
    assert not (tmp_path / "from-env").exists()
    read_back = runner.invoke(
        main_app, ["--store", str(store), "ipfs", "cat", HELLO_CID_V1]
    )
    assert read_back.exit_code == 0, read_back.output
    assert read_back.stdout_bytes == HELLO
