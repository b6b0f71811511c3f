"""Start and stop a local Anvil chain on a free loopback port."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

from ztfm_chain.chain.compiler import project_root
from ztfm_chain.exceptions import ChainUnavailable, ConfigError

log = logging.getLogger(__name__)

#: Anvil's default chain id.
ANVIL_CHAIN_ID = 31337
#: The mnemonic Anvil derives its funded development accounts from. Public: never
#: use these accounts on a chain that holds value.
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"

_LISTENING = re.compile(rb"Listening on ([0-9.]+):(\d+)")


def find_anvil() -> Path:
    """Locate the anvil binary: ``ZTFM_ANVIL``, then node_modules, then ``PATH``."""
    override = os.environ.get("ZTFM_ANVIL")
    candidates = [Path(override)] if override else []
    candidates.append(
        project_root() / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
    )
    on_path = shutil.which("anvil")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(
        "anvil binary not found; run `npm ci` in the project root or set ZTFM_ANVIL "
        f"(looked in: {', '.join(str(c) for c in candidates)})"
    )


class Anvil:
    """An Anvil process on 127.0.0.1, started on a free port.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        *,
        chain_id: int = ANVIL_CHAIN_ID,
        accounts: int = 10,
        block_time: float | None = None,
        state_path: Path | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.chain_id = chain_id
        self.accounts = accounts
        self.block_time = block_time
        self.state_path = state_path
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._drain: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The JSON-RPC URL of the running chain."""
        if self.port is None:
            raise ChainUnavailable("Anvil is not running; call start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id, or None when not running."""
        return self._process.pid if self._process else None

    def start(self) -> str:
        """Start Anvil and return its URL once it listens."""
        command = [
            str(find_anvil()),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--chain-id",
            str(self.chain_id),
            "--accounts",
            str(self.accounts),
            "--mnemonic",
            ANVIL_MNEMONIC,
        ]
        if self.block_time is not None:
            command += ["--block-time", str(self.block_time)]
        if self.state_path is not None:
            command += ["--state", str(self.state_path)]
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        assert self._process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        seen = b""
        while time.monotonic() < deadline:
            line = self._process.stdout.readline()
            if not line:
                break
            seen += line
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(2))
                # Keep reading its output so that a full pipe never blocks Anvil.
                self._drain = threading.Thread(
                    target=self._process.stdout.read, daemon=True
                )
                self._drain.start()
                log.info("anvil.started pid=%s url=%s", self._process.pid, self.url)
                return self.url
        self.stop()
        tail = seen.decode(errors="replace")[-500:]
        raise ChainUnavailable(
            f"Anvil did not report a listening port within {self.startup_timeout}s; "
            f"its output ended with: {tail!r}"
        )

    def stop(self) -> None:
        """Stop Anvil (SIGTERM, then SIGKILL after 5 s)."""
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
        log.info("anvil.stopped pid=%s", process.pid)
        self.port = None

    def __enter__(self) -> Anvil:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
