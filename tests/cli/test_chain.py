"""``ztfm chain up``, ``status`` and ``down`` as real processes, and wrong chains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ztfm_chain.chain.anvil import Anvil
from ztfm_chain.cli.settings import embedded_chain_file

from .conftest import CLEARED_ENV, ZTFM, Cli, assert_one_line_error


def run_ztfm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in CLEARED_ENV}
    env["ZTFM_HOME"] = str(home)
    return subprocess.run(
        [str(ZTFM), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def process_ended(pid: int) -> bool:
    """Tell whether ``pid`` exited; a zombie has exited but may await reaping."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A ZTFM_HOME whose recorded Anvil is stopped at the end, whatever happened."""
    home = tmp_path / "home"
    yield home
    record = embedded_chain_file(home)
    if record.is_file():
        pid = int(json.loads(record.read_text())["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline")
        # Check the name first, so that a pid reused by another process is spared.
        if cmdline.is_file() and b"anvil" in cmdline.read_bytes():
            os.kill(pid, signal.SIGKILL)


def test_chain_up_status_down(home: Path) -> None:
    started = run_ztfm(home, "--json", "chain", "up")
    assert started.returncode == 0, started.stderr
    record = json.loads(started.stdout)
    assert record["chain_id"] == 31337
    assert record["url"].startswith("http://127.0.0.1:")
    assert json.loads(embedded_chain_file(home).read_text()) == record

    again = Cli(home, None)("chain", "up")
    assert_one_line_error(again, 2, "already running", str(record["pid"]))

    status = run_ztfm(home, "--json", "chain", "status")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["rpc_url"] == record["url"]
    assert report["rpc_source"] == "ztfm chain up"
    assert report["embedded_pid"] == record["pid"]
    assert report["deployment"]["present"] is False

    human = Cli(home, None).ok("chain", "status")
    assert f"chain: {record['url']} (from ztfm chain up)" in human.stderr
    assert "genesis 0x" in human.stdout

    stopped = run_ztfm(home, "chain", "down")
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped Anvil at {record['url']}" in stopped.stdout
    assert not embedded_chain_file(home).exists()
    assert process_ended(record["pid"])

    nothing = Cli(home, None)("chain", "down")
    assert nothing.exit_code == 0
    assert "nothing to stop" in nothing.stdout


def test_status_after_deploy_lists_contracts(deployed_cli: Cli) -> None:
    report = deployed_cli.json("chain", "status")
    deployment = report["deployment"]
    assert deployment["valid"] is True
    assert set(deployment["contracts"]) == {
        "EthereumDIDRegistry",
        "DeviceRegistry",
        "TrustRegistry",
        "ModelRegistry",
    }


def test_restarted_chain_exits_4(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Anvil() as first:
        Cli(home, first.url).ok("deploy")
    with Anvil() as second:
        cli = Cli(home, second.url)
        for command in (["device", "list"], ["model", "status", "1"]):
            assert_one_line_error(cli(*command), 4, "deploy again")
        status = cli("chain", "status")
        assert status.exit_code == 4
        assert "does not match this chain" in status.stdout
        # A deployment on the new chain replaces the stale manifest without --force.
        cli.ok("deploy")
        assert cli.json("device", "list") == []


def test_unreachable_chain_exits_4(tmp_path: Path) -> None:
    with Anvil() as node:
        url = node.url
    result = Cli(tmp_path / "home", url)("device", "list")
    assert_one_line_error(result, 4, url)


def test_debug_lets_the_error_propagate(tmp_path: Path) -> None:
    with Anvil() as node:
        url = node.url
    cli = Cli(tmp_path / "home", url)
    result = cli("--debug", "chain", "status")
    assert result.exit_code == 1
    assert type(result.exception).__name__ == "ChainUnavailable"


@pytest.mark.parametrize(
    ("config_text", "fragment"),
    [
        ("rpc_url = \n", "is not valid TOML"),
        ("rpc_url = 5\n", "invalid JSON-RPC URL '5'"),
    ],
)
def test_bad_config_file_exits_2(
    tmp_path: Path, config_text: str, fragment: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(config_text)
    cli = Cli(tmp_path / "home", None)
    result = cli("--config", str(config), "chain", "status")
    assert_one_line_error(result, 2, fragment)


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home", None)
    result = cli("--config", str(tmp_path / "missing.toml"), "chain", "status")
    assert_one_line_error(result, 2, "missing.toml not found")


def test_rpc_url_without_scheme_exits_2(tmp_path: Path) -> None:
    result = Cli(tmp_path / "home", "127.0.0.1:8545")("chain", "status")
    assert_one_line_error(result, 2, "invalid JSON-RPC URL '127.0.0.1:8545'")
