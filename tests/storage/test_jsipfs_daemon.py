"""The js-ipfs test daemon: loopback-only configuration and readiness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ztfm_chain.exceptions import ConfigError
from ztfm_chain.storage.jsipfs import find_node_modules, run_ipfs_daemon

from .conftest import IpfsDaemon
from .helpers import api_version


def test_daemon_api_on_loopback(ipfs_daemon: IpfsDaemon) -> None:
    assert ipfs_daemon.api.startswith("/ip4/127.0.0.1/tcp/")
    assert ipfs_daemon.api.endswith("/http")
    assert "Version" in api_version(ipfs_daemon.api)


def test_daemon_config_is_offline_loopback(ipfs_daemon: IpfsDaemon) -> None:
    config = json.loads((ipfs_daemon.repo_dir / "config").read_text())
    addresses = config["Addresses"]
    assert addresses["Swarm"] == []
    assert addresses["Announce"] == []
    assert addresses["Delegates"] == []
    assert addresses["API"] == "/ip4/127.0.0.1/tcp/0"
    assert addresses["Gateway"] == "/ip4/127.0.0.1/tcp/0"
    assert addresses["RPC"] == "/ip4/127.0.0.1/tcp/0"
    assert config["Bootstrap"] == []
    assert config["Discovery"]["MDNS"]["Enabled"] is False
    assert config["Discovery"]["webRTCStar"]["Enabled"] is False


def test_daemon_log_shows_ready(ipfs_daemon: IpfsDaemon) -> None:
    log = (ipfs_daemon.repo_dir / "daemon.log").read_text()
    assert "Daemon is ready" in log
    assert f"HTTP API listening on {ipfs_daemon.api}" in log


def test_daemon_missing_node_binary_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "ipfs" / "src").mkdir(parents=True)
    (tmp_path / "ipfs" / "src" / "cli.js").write_text("")
    daemon = run_ipfs_daemon(tmp_path / "repo", node_modules=tmp_path)
    with pytest.raises(ConfigError, match="Node binary"), daemon:
        pass


def test_find_node_modules_override_must_contain_ipfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZTFM_NODE_MODULES", str(tmp_path))
    with pytest.raises(ConfigError, match="js-ipfs not found"):
        find_node_modules()
