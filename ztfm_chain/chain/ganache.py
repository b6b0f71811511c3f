"""Start and stop a local Ganache chain on a free loopback port.

:class:`Ganache` has the interface of :class:`~ztfm_chain.chain.anvil.Anvil` and the
same development accounts, so code and tests written for Anvil can run on Ganache 7
(npm ``ganache``, installed with the project's npm packages) to compare the two nodes.
Ganache 7.9.2 supports no hardfork newer than shanghai, which is what the contracts
are compiled for.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from ztfm_chain.chain.anvil import ANVIL_CHAIN_ID, ANVIL_MNEMONIC
from ztfm_chain.chain.compiler import project_root
from ztfm_chain.exceptions import ChainUnavailable, ConfigError

log = logging.getLogger(__name__)

#: Ether per development account, as Anvil funds them (Ganache's default is 1000).
DEFAULT_BALANCE_ETHER = 10_000
#: How many times :meth:`Ganache.start` picks a new port when another process took the
#: one it picked before Ganache could listen on it.
_PORT_ATTEMPTS = 3
_OUTPUT_LINES = 40


def find_ganache() -> list[str]:
    """Return the command that runs Ganache's CLI with Node.

    The CLI script is ``ZTFM_GANACHE`` when set, else the one in node_modules.
    """
    node = shutil.which("node")
    if node is None:
        raise ConfigError(
            "node not found on PATH; install Node.js (Ganache 7.9.2 runs on Node 20 "
            "and 22) and put it on PATH"
        )
    override = os.environ.get("ZTFM_GANACHE")
    script = (
        Path(override)
        if override
        else project_root() / "node_modules/ganache/dist/node/cli.js"
    )
    if not script.is_file():
        raise ConfigError(
            f"Ganache CLI not found at {script}; run `npm ci` in the project root "
            "or set ZTFM_GANACHE to ganache's dist/node/cli.js"
        )
    return [node, str(script)]


def _free_port() -> int:
    # The port is free when the socket closes, but another process may take it before
    # Ganache binds it. start() then retries with a new port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Ganache:
    """A Ganache process on 127.0.0.1, started on a free port.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. Ganache mines
    each transaction into its own block before it returns the hash (eager instamine),
    unless ``block_time`` is set.
    """

    def __init__(
        self,
        *,
        chain_id: int = ANVIL_CHAIN_ID,
        accounts: int = 10,
        block_time: float | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.chain_id = chain_id
        self.accounts = accounts
        self.block_time = block_time
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._output: collections.deque[bytes] = collections.deque(maxlen=_OUTPUT_LINES)
        self._drain_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The JSON-RPC URL of the running chain."""
        if self.port is None:
            raise ChainUnavailable("Ganache is not running; call start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id, or None when not running."""
        return self._process.pid if self._process else None

    def start(self) -> str:
        """Start Ganache and return its URL once it responds to ``eth_chainId``."""
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = _free_port()
            self._spawn(port)
            try:
                ready = self._wait_until_ready(port)
            except BaseException:
                self.stop()
                raise
            if ready:
                self.port = port
                log.info(
                    "ganache.started pid=%s url=%s",
                    self.pid,
                    f"http://127.0.0.1:{port}",
                )
                return self.url
            exit_status = self._process.poll() if self._process else None
            if exit_status is not None and self._drain_thread is not None:
                # Let the thread read the last lines that the process wrote.
                self._drain_thread.join(timeout=2)
            output = self._output_tail()
            self.stop()
            if exit_status is None:
                raise ChainUnavailable(
                    f"Ganache timed out: no response to eth_chainId on 127.0.0.1:{port} "
                    f"within {self.startup_timeout}s. Its output ended with: {output!r}"
                )
            if "EADDRINUSE" not in output:
                raise ChainUnavailable(
                    f"Ganache exited with status {exit_status} before it responded on "
                    f"127.0.0.1:{port}. Its output ended with: {output!r}"
                )
            log.warning(
                "ganache.port_taken port=%s attempt=%s of %s",
                port,
                attempt,
                _PORT_ATTEMPTS,
            )
        raise ChainUnavailable(
            f"Ganache failed to start: another process took each of the {_PORT_ATTEMPTS} "
            "free ports it was given (EADDRINUSE). Retry, or check what opens loopback "
            "ports."
        )

    def stop(self) -> None:
        """Stop Ganache (SIGTERM, then SIGKILL after 5 s)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        log.info("ganache.stopped pid=%s", process.pid)
        self.port = None

    def _spawn(self, port: int) -> None:
        command = [
            *find_ganache(),
            "--server.host",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--chain.chainId",
            str(self.chain_id),
            "--chain.hardfork",
            "shanghai",
            "--wallet.mnemonic",
            ANVIL_MNEMONIC,
            "--wallet.totalAccounts",
            str(self.accounts),
            "--wallet.defaultBalance",
            str(DEFAULT_BALANCE_ETHER),
            "--logging.quiet",
        ]
        if self.block_time is None:
            command += ["--miner.instamine", "eager"]
        else:
            command += ["--miner.blockTime", str(self.block_time)]
        self._output.clear()
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        # Ganache prints its accounts even with --logging.quiet. Keep reading so that a
        # full pipe never blocks it, and keep the last lines for error messages.
        self._drain_thread = threading.Thread(
            target=self._drain, args=(self._process,), daemon=True
        )
        self._drain_thread.start()

    def _drain(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._output.append(line)

    def _output_tail(self) -> str:
        text = b"".join(self._output).decode(errors="replace")
        return text[-1000:]

    def _wait_until_ready(self, port: int) -> bool:
        """Poll ``eth_chainId`` until Ganache responds.

        Returns False when Ganache exits or the startup timeout passes.
        """
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            chain_id = _request_chain_id(port)
            if chain_id is not None:
                # Another node that took the port after Ganache failed to bind it
                # would respond too, so check the process and the id.
                if self._process.poll() is not None:
                    return False
                if chain_id != self.chain_id:
                    raise ChainUnavailable(
                        f"the node on 127.0.0.1:{port} reports chain id {chain_id}, "
                        f"expected {self.chain_id}. Another node may have taken the "
                        "port, so retry."
                    )
                return True
            time.sleep(0.1)
        return False

    def __enter__(self) -> Ganache:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _request_chain_id(port: int) -> int | None:
    """Return the node's ``eth_chainId``, or None while nothing listens on ``port``."""
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            reply = json.load(response)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return int(reply["result"], 16)
