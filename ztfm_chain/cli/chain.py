"""``ztfm chain``: start, stop and inspect a local Anvil.

``ztfm chain up`` starts Anvil in its own session, so it keeps running after the
command ends, and records its URL and process id in ``$ZTFM_HOME/chain.json``. Every
other command then uses that chain unless ``--rpc-url``, ``$ZTFM_RPC_URL`` or the
config file names another one.

The helpers at the end of this module are shared by the other command groups: the
settings of a command with their sources, JSON and table output, and the parsing of
addresses and ranges into one-line :class:`UsageError` messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from eth_typing import ChecksumAddress
from eth_utils.address import is_checksum_address, to_checksum_address
from rich.console import Console
from web3.exceptions import Web3RPCError
from web3.types import EventData

from ztfm_chain.chain.anvil import ANVIL_CHAIN_ID, ANVIL_MNEMONIC, find_anvil
from ztfm_chain.chain.client import ChainClient
from ztfm_chain.chain.deploy import System, connect, load_manifest, manifest_path
from ztfm_chain.chain.events import DEFAULT_PAGE_SIZE, iter_events
from ztfm_chain.cli.common import EXIT_CHAIN, EXIT_USAGE, handle_errors, settings
from ztfm_chain.cli.settings import Settings, embedded_chain_file
from ztfm_chain.exceptions import (
    ChainError,
    ChainMismatch,
    ChainUnavailable,
    ConfigError,
    UsageError,
)

#: Funded accounts of the Anvil that ``ztfm chain up`` starts (dev:0 to dev:9).
DEV_ACCOUNTS = 10
#: Seconds that ``ztfm chain down`` waits after SIGTERM, while Anvil writes its
#: ``--state`` file, before it sends SIGKILL.
STOP_TIMEOUT = 10.0

_LISTENING = re.compile(r"Listening on 127\.0\.0\.1:(\d+)")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")

app = typer.Typer(
    help=(
        "Start, stop and inspect the local Anvil chain that other commands use by "
        "default (recorded in $ZTFM_HOME/chain.json)."
    ),
    no_args_is_help=True,
)


@dataclass(frozen=True)
class ChainRecord:
    """Record of the Anvil that ``ztfm chain up`` started, kept in ``chain.json``."""

    url: str
    pid: int
    chain_id: int
    state: str | None
    log: str
    started_at: int


@app.command("up")
@handle_errors
def up(
    ctx: typer.Context,
    state: Annotated[
        Path | None,
        typer.Option(
            help="Keep the chain in this JSON file: Anvil loads it at start, if it "
            "exists, and writes it when `ztfm chain down` stops Anvil.",
            show_default=False,
        ),
    ] = None,
    block_time: Annotated[
        float | None,
        typer.Option(
            help="Mine a block every this many seconds (default: one block per "
            "transaction).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for Anvil to listen.")
    ] = 20.0,
) -> None:
    """Start Anvil on a free 127.0.0.1 port in the background and record it."""
    cfg = command_settings(ctx)
    record_path = embedded_chain_file(cfg.home)
    existing = read_chain_record(record_path)
    if existing is not None and _is_running_anvil(existing.pid):
        raise UsageError(
            f"a chain started by `ztfm chain up` is already running at {existing.url} "
            f"(pid {existing.pid}); stop it with `ztfm chain down` first"
        )
    if existing is not None:
        notice(f"replacing the record of a stopped chain (pid {existing.pid})")
    if block_time is not None and block_time <= 0:
        raise UsageError(f"invalid --block-time {block_time}: expected seconds > 0")
    cfg.home.mkdir(parents=True, exist_ok=True)
    record = _start_anvil(cfg.home, state, block_time, timeout)
    _write_json(record_path, asdict(record))
    if cfg.json_output:
        print_json(asdict(record))
        return
    out = stdout_console()
    out.print(f"Anvil is running at {record.url} (pid {record.pid})")
    out.print(f"chain id {record.chain_id}; log {record.log}")
    if record.state:
        out.print(f"state file {record.state}, written when `ztfm chain down` stops it")
    out.print("Deploy the contracts with `ztfm deploy`; stop with `ztfm chain down`.")


@app.command("down")
@handle_errors
def down(ctx: typer.Context) -> None:
    """Stop the Anvil that `ztfm chain up` started, and remove its record."""
    cfg = command_settings(ctx)
    record_path = embedded_chain_file(cfg.home)
    record = read_chain_record(record_path)
    if record is None:
        message = f"no chain recorded in {record_path}; nothing to stop"
        if cfg.json_output:
            print_json({"stopped": False, "message": message})
        else:
            stdout_console().print(message)
        return
    stopped = False
    if _is_running_anvil(record.pid):
        _stop_process(record.pid)
        stopped = True
    else:
        notice(f"pid {record.pid} is not a running Anvil; removing the stale record")
    record_path.unlink(missing_ok=True)
    if cfg.json_output:
        print_json({"stopped": stopped, **asdict(record)})
        return
    if stopped:
        stdout_console().print(f"stopped Anvil at {record.url} (pid {record.pid})")
    if record.state and Path(record.state).is_file():
        stdout_console().print(f"chain state saved in {record.state}")
    elif record.state:
        notice(f"Anvil wrote no state file {record.state}")


@app.command("status")
@handle_errors
def status(ctx: typer.Context) -> None:
    """Show the chain id, head block, genesis hash and whether the manifest matches.

    Exits 4 when a manifest exists for this chain id but the chain is not the one it
    describes (restarted, or another chain), and 2 when the manifest is unreadable.
    """
    cfg = command_settings(ctx)
    client = cfg.client()
    head = client.read(lambda: client.w3.eth.block_number)
    result: dict[str, Any] = {
        "rpc_url": client.url,
        "rpc_source": cfg.rpc_source,
        "chain_id": client.chain_id,
        "block_number": head,
        "genesis_hash": client.genesis_hash(),
    }
    record = read_chain_record(embedded_chain_file(cfg.home))
    if record is not None and record.url == client.url:
        result["embedded_pid"] = record.pid
    deployment, exit_code = _deployment_status(cfg, client)
    result["deployment"] = deployment
    if cfg.json_output:
        print_json(result)
    else:
        _print_status(result)
    if exit_code:
        raise typer.Exit(exit_code)


def _deployment_status(
    cfg: Settings, client: ChainClient
) -> tuple[dict[str, Any], int]:
    path = manifest_path(cfg.home, client.chain_id)
    state: dict[str, Any] = {"manifest": str(path), "present": path.is_file()}
    if not path.is_file():
        state["valid"] = False
        state["problem"] = "no manifest for this chain id; run `ztfm deploy`"
        return state, 0
    try:
        deployment = load_manifest(path)
        connect(client, deployment)
    except ConfigError as exc:
        state.update(valid=False, problem=str(exc))
        return state, EXIT_USAGE
    except ChainMismatch as exc:
        state.update(valid=False, problem=str(exc))
        return state, EXIT_CHAIN
    state.update(
        valid=True,
        problem=None,
        deployed_at_block=deployment.deployed_at_block,
        contracts=dict(deployment.addresses()),
    )
    return state, 0


def _print_status(result: dict[str, Any]) -> None:
    out = stdout_console()
    pid = result.get("embedded_pid")
    started = f", Anvil pid {pid} from `ztfm chain up`" if pid else ""
    out.print(f"chain   {result['rpc_url']}{started}")
    out.print(f"chain id {result['chain_id']}, head block {result['block_number']}")
    out.print(f"genesis {result['genesis_hash']}")
    deployment = result["deployment"]
    if deployment["valid"]:
        out.print(f"manifest {deployment['manifest']}: contracts found at")
        for name, address in deployment["contracts"].items():
            out.print(f"  {name:<20} {address}")
    elif deployment["present"]:
        out.print(f"manifest {deployment['manifest']} does not match this chain:")
        out.print(f"  {deployment['problem']}")
    else:
        out.print(
            f"no deployment manifest at {deployment['manifest']}; run `ztfm deploy`"
        )


# ---------------------------------------------------------------------------------
# Starting and stopping Anvil
# ---------------------------------------------------------------------------------


def read_chain_record(path: Path) -> ChainRecord | None:
    """Return the record of ``ztfm chain up``, or None when there is none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ChainRecord(
            url=str(data["url"]),
            pid=int(data["pid"]),
            chain_id=int(data["chain_id"]),
            state=data.get("state"),
            log=str(data.get("log", "")),
            started_at=int(data.get("started_at", 0)),
        )
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"chain record {path} is not valid ({exc}); delete it and run "
            "`ztfm chain up` again"
        ) from None


def _start_anvil(
    home: Path, state: Path | None, block_time: float | None, timeout: float
) -> ChainRecord:
    log_path = home / "anvil.log"
    command = [
        str(find_anvil()),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--chain-id",
        str(ANVIL_CHAIN_ID),
        "--accounts",
        str(DEV_ACCOUNTS),
        "--mnemonic",
        ANVIL_MNEMONIC,
    ]
    if state is not None:
        state = state.expanduser().resolve()
        command += ["--state", str(state)]
    if block_time is not None:
        command += ["--block-time", str(block_time)]
    # Anvil writes to a log file, not a pipe, because a pipe would break (and stop
    # Anvil at its next write) as soon as this command exits. Its own session keeps
    # it out of the terminal's process group, so Ctrl-C in the shell does not stop it.
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        port = _wait_for_port(process, log_path, timeout)
        url = f"http://127.0.0.1:{port}"
        chain_id = ChainClient(url).chain_id
    except BaseException:
        process.kill()
        process.wait(timeout=5)
        raise
    return ChainRecord(
        url=url,
        pid=process.pid,
        chain_id=chain_id,
        state=str(state) if state is not None else None,
        log=str(log_path),
        started_at=int(time.time()),
    )


def _wait_for_port(
    process: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> int:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        match = _LISTENING.search(text)
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            raise ChainUnavailable(
                f"Anvil exited with code {process.returncode} before listening; "
                f"its log {log_path} ends with: {text[-400:]!r}"
            )
        time.sleep(0.05)
    raise ChainUnavailable(
        f"Anvil did not report a listening port within {timeout}s; its log "
        f"{log_path} ends with: {text[-400:]!r}"
    )


def _is_running_anvil(pid: int) -> bool:
    """Tell whether ``pid`` is a live Anvil process, so a reused pid is never killed."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if not Path("/proc/self").is_dir():
        # NOTE: without /proc (macOS) the process name and state are not checked.
        return True
    proc = Path("/proc") / str(pid)
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return False
    # A zombie has exited and only waits for its parent to reap it.
    return fields[0] != "Z" and "anvil" in Path(argv0).name


def _stop_process(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not _is_running_anvil(pid):
            return
        _reap(pid)
        time.sleep(0.05)
    notice(f"Anvil (pid {pid}) did not stop within {STOP_TIMEOUT}s; sending SIGKILL")
    os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    # Only reaps when this process started Anvil itself (as in tests that run
    # `chain up` in-process); otherwise init reaps it.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".chain-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------
# Shared by the command groups
# ---------------------------------------------------------------------------------


def command_settings(ctx: typer.Context) -> Settings:
    """Return the command's settings; in human mode, print their sources on stderr."""
    cfg = cast(Settings, settings(ctx))
    if not cfg.json_output:
        sources = cfg.describe()
        stderr_console().print(
            f"chain: {sources['chain']}\nstore: {sources['store']}\n"
            f"keys: {cfg.keys_dir()} (names), dev:N (public Anvil keys)",
            style="dim",
        )
    return cfg


def stdout_console() -> Console:
    """Return a console on standard output, for results meant for people.

    Markup is off, so brackets in paths and values print as they are.
    """
    return Console(highlight=False, markup=False)


def stderr_console() -> Console:
    """Return a console on standard error, for notices and progress."""
    return Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def notice(message: str) -> None:
    """Print a notice on standard error, in both human and JSON mode."""
    stderr_console().print(f"note: {message}", style="yellow")


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on standard output."""
    typer.echo(json.dumps(data, indent=2))


def parse_address(value: str, what: str) -> ChecksumAddress:
    """Parse a 0x address, raising a one-line UsageError that names ``what``."""
    if not _ADDRESS.fullmatch(value):
        raise UsageError(
            f"invalid {what} {value!r}: expected 0x followed by 40 hex digits"
        )
    digits = value[2:]
    mixed_case = digits != digits.lower() and digits != digits.upper()
    if mixed_case and not is_checksum_address(value):
        raise UsageError(
            f"invalid {what} {value!r}: the EIP-55 checksum (its mixed case) is wrong"
        )
    return to_checksum_address(value)


def check_range(option: str, value: int, low: int, high: int, unit: str = "") -> int:
    """Return ``value`` if ``low <= value <= high``, else raise a UsageError."""
    if not low <= value <= high:
        suffix = f" {unit}" if unit else ""
        raise UsageError(f"invalid {option} {value}: expected {low} to {high}{suffix}")
    return value


def parse_hex32(option: str, value: str) -> bytes:
    """Parse 32 bytes written as 64 hex digits, with or without 0x."""
    digits = value[2:] if value.lower().startswith("0x") else value
    if not re.fullmatch(r"[0-9a-fA-F]{64}", digits):
        raise UsageError(
            f"invalid {option} {value!r}: expected 32 bytes as 64 hex digits"
        )
    return bytes.fromhex(digits)


def hex0x(data: bytes) -> str:
    """Return ``0x`` followed by the lowercase hex of ``data``."""
    return "0x" + bytes(data).hex()


def format_time(timestamp: int) -> str:
    """Return a Unix time as UTC text, or ``-`` for zero (never)."""
    if timestamp == 0:
        return "-"
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def tx_hash(receipt: Any) -> str:
    """Return the transaction hash of a receipt as 0x-prefixed hex."""
    return hex0x(bytes(receipt["transactionHash"]))


def read_events(
    system: System,
    event: Any,
    *,
    argument_filters: dict[str, Any] | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> list[EventData]:
    """Read an event's logs from the deployment block to the head, page by page."""
    client = system.client
    head = client.read(lambda: client.w3.eth.block_number)
    try:
        return list(
            iter_events(
                client,
                event,
                system.deployment.deployed_at_block,
                head,
                argument_filters=argument_filters,
                page_size=page_size,
            )
        )
    except Web3RPCError as exc:
        raise ChainError(
            f"{client.url} rejected the eth_getLogs request for {event.event_name}: "
            f"{exc}"
        ) from None
