"""``ztfm device``: device keys, enrolment, attestation, status and key rotation."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from eth_typing import ChecksumAddress
from rich.table import Table

from ztfm_chain.chain.client import ChainClient
from ztfm_chain.chain.deploy import System
from ztfm_chain.chain.events import DEFAULT_PAGE_SIZE
from ztfm_chain.cli.chain import (
    check_range,
    command_settings,
    format_time,
    hex0x,
    notice,
    parse_address,
    parse_hex32,
    print_json,
    read_events,
    stdout_console,
    tx_hash,
)
from ztfm_chain.cli.common import handle_errors
from ztfm_chain.cli.deploy import PasswordFileOption, role_account
from ztfm_chain.cli.settings import ENV_PASSWORD, ENV_PASSWORD_FILE, Settings
from ztfm_chain.exceptions import ChainUnavailable, KeystoreError, UsageError
from ztfm_chain.identity import registrar
from ztfm_chain.identity.did import build_did_document, did_for, parse_did
from ztfm_chain.identity.keys import generate_keystore, resolve_password
from ztfm_chain.storage.cid import normalize_cid

_KEY_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UINT16_MAX = 2**16 - 1
_UINT32_MAX = 2**32 - 1
#: Devices read per devicesOf call by ``device list``. On Anvil 1.7.1, 500 unenrolled
#: addresses estimate at 4.0 million gas, well below its 30 million block gas limit.
_DEVICES_PER_CALL = 500
#: Upper bound of ``--lifetime``: the contract stores expiry times as uint64, and ten
#: years is far beyond any credential an attestor should issue.
MAX_CREDENTIAL_LIFETIME = 10 * 365 * 86_400

# The statuses from which each registrar transition starts, as DeviceRegistry checks.
_STATUS_FROM = {
    "suspend": (registrar.DeviceStatus.ACTIVE,),
    "reinstate": (registrar.DeviceStatus.SUSPENDED,),
    "revoke": (registrar.DeviceStatus.ACTIVE, registrar.DeviceStatus.SUSPENDED),
}

app = typer.Typer(
    help="Create device keys, enrol and attest devices, change their status, rotate "
    "their keys and list them.",
    no_args_is_help=True,
)

DeviceArgument = Annotated[
    str,
    typer.Argument(
        metavar="DEVICE",
        help="The device: its 0x address, its did:ethr DID, or the name of its "
        "keystore in $ZTFM_HOME/keys.",
        show_default=False,
    ),
]
RegistrarOption = Annotated[
    str | None,
    typer.Option(
        "--registrar",
        help="KEY with REGISTRAR_ROLE that sends the transaction (default on 31337: "
        "the development key that has it).",
        show_default=False,
    ),
]


@app.command("keygen")
@handle_errors
def keygen(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME", help="Keystore name: letters, digits, - and _ (at most 64)."
        ),
    ],
    password_file: Annotated[
        Path | None,
        typer.Option(
            help="File with the new keystore's password (default $ZTFM_PASSWORD_FILE, "
            "then $ZTFM_PASSWORD, then a prompt that asks twice).",
            show_default=False,
        ),
    ] = None,
    chain_id: Annotated[
        int | None,
        typer.Option(
            help="Chain id of the printed DID (default: the configured chain's).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create a device key in the encrypted keystore $ZTFM_HOME/keys/NAME.json."""
    cfg = command_settings(ctx)
    if not _KEY_NAME.fullmatch(name):
        raise UsageError(
            f"invalid keystore name {name!r}: use 1 to 64 letters, digits, - and _"
        )
    if chain_id is not None:
        check_range("--chain-id", chain_id, 1, 2**64 - 1)
    path = cfg.keys_dir() / f"{name}.json"
    password = _new_password(password_file)
    address = generate_keystore(path, password)
    did_chain = chain_id if chain_id is not None else _configured_chain_id(cfg)
    did = did_for(did_chain, address) if did_chain is not None else None
    result = {"name": name, "keystore": str(path), "address": address, "did": did}
    if cfg.json_output:
        print_json(result)
        return
    out = stdout_console()
    out.print(f"keystore {path}")
    out.print(f"address  {address}")
    out.print(f"DID      {did or 'unknown: no chain is configured; pass --chain-id'}")


def _new_password(password_file: Path | None) -> str:
    if password_file is not None:
        return resolve_password(file=password_file)
    if os.environ.get(ENV_PASSWORD_FILE):
        return resolve_password(file=Path(os.environ[ENV_PASSWORD_FILE]))
    if os.environ.get(ENV_PASSWORD):
        return resolve_password(env_var=ENV_PASSWORD)
    try:
        return resolve_password(
            prompt=True, prompt_text="New keystore password: ", confirm=True
        )
    except KeystoreError as exc:
        raise KeystoreError(
            f"{exc}; set ${ENV_PASSWORD} or ${ENV_PASSWORD_FILE}, or pass "
            "--password-file"
        ) from None


def _configured_chain_id(cfg: Settings) -> int | None:
    if cfg.rpc_url is None:
        return None
    try:
        return ChainClient(cfg.rpc_url).chain_id
    except ChainUnavailable as exc:
        notice(f"the DID is not shown because the chain did not answer: {exc}")
        return None


@app.command("enrol")
@handle_errors
def enrol(
    ctx: typer.Context,
    device_key: Annotated[
        str,
        typer.Argument(
            metavar="DEVICE_KEY",
            help="The device's KEY (keystore name, keystore path or dev:N), which "
            "signs the proof of key possession.",
        ),
    ],
    segment: Annotated[
        int, typer.Option(help="Network segment of the device (0 to 4294967295).")
    ] = 1,
    roles: Annotated[
        int,
        typer.Option(help="Role bitmask (bit 0, value 1, is trainer; 0 to 65535)."),
    ] = registrar.ROLE_TRAINER,
    metadata_cid: Annotated[
        str,
        typer.Option(help="CID of the device's metadata document (default: none)."),
    ] = "",
    registrar_key: RegistrarOption = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Enrol a device: it signs its proof with its own key, the registrar submits."""
    cfg = command_settings(ctx)
    check_range("--segment", segment, 0, _UINT32_MAX)
    check_range("--roles", roles, 0, _UINT16_MAX)
    if metadata_cid:
        normalize_cid(metadata_cid)
    system = cfg.system()
    device = cfg.account(
        device_key, chain_id=system.client.chain_id, password_file=password_file
    )
    status = registrar.device_record(system, device.address).status
    if status is not registrar.DeviceStatus.NONE:
        raise UsageError(
            f"device {device.address} of key {device_key!r} is already enrolled "
            f"(status {status.name})"
        )
    submitter = role_account(
        cfg,
        system,
        registrar_key,
        role="REGISTRAR_ROLE",
        option="--registrar",
        password_file=password_file,
    )
    receipt = registrar.enrol_device(
        system,
        submitter,
        device,
        roles=roles,
        segment=segment,
        metadata_cid=metadata_cid,
    )
    _print_change(cfg, system, device.address, "enrolled", tx_hash(receipt))


@app.command("attest")
@handle_errors
def attest(
    ctx: typer.Context,
    device: DeviceArgument,
    measurement: Annotated[
        str,
        typer.Option(
            help="Firmware measurement the attestor vouches for: 32 bytes as 64 hex "
            "digits, with or without 0x.",
            show_default=False,
        ),
    ],
    lifetime: Annotated[
        int, typer.Option(help="Seconds the credential stays valid.")
    ] = 86_400,
    attestor: Annotated[
        str | None,
        typer.Option(
            help="KEY with ATTESTOR_ROLE that signs and submits the statement "
            "(default on 31337: the development key that has it).",
            show_default=False,
        ),
    ] = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Issue a device credential: the attestor signs the measurement and expiry."""
    cfg = command_settings(ctx)
    digest = parse_hex32("--measurement", measurement)
    check_range("--lifetime", lifetime, 1, MAX_CREDENTIAL_LIFETIME, "seconds")
    system = cfg.system()
    address = resolve_device(cfg, device, system.client.chain_id)
    _require_enrolled(system, address)
    signer = role_account(
        cfg,
        system,
        attestor,
        role="ATTESTOR_ROLE",
        option="--attestor",
        password_file=password_file,
    )
    receipt = registrar.attest_device(
        system, signer, address, measurement=digest, lifetime=lifetime
    )
    _print_change(cfg, system, address, "attested", tx_hash(receipt))


@app.command("suspend")
@handle_errors
def suspend(
    ctx: typer.Context,
    device: DeviceArgument,
    registrar_key: RegistrarOption = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Suspend an active device: it cannot commit updates until reinstated."""
    _change_status(ctx, device, "suspend", registrar_key, password_file)


@app.command("reinstate")
@handle_errors
def reinstate(
    ctx: typer.Context,
    device: DeviceArgument,
    registrar_key: RegistrarOption = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Return a suspended device to active."""
    _change_status(ctx, device, "reinstate", registrar_key, password_file)


@app.command("revoke")
@handle_errors
def revoke(
    ctx: typer.Context,
    device: DeviceArgument,
    yes: Annotated[
        bool, typer.Option("--yes", help="Revoke without asking for confirmation.")
    ] = False,
    registrar_key: RegistrarOption = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Revoke an active or suspended device for good; it cannot be reinstated."""
    _change_status(ctx, device, "revoke", registrar_key, password_file, confirm=not yes)


def _change_status(
    ctx: typer.Context,
    device: str,
    function: str,
    registrar_key: str | None,
    password_file: Path | None,
    *,
    confirm: bool = False,
) -> None:
    """Call the registrar-only DeviceRegistry ``function`` on a device."""
    cfg = command_settings(ctx)
    system = cfg.system()
    address = resolve_device(cfg, device, system.client.chain_id)
    current = registrar.device_record(system, address).status
    if current not in _STATUS_FROM[function]:
        allowed = " or ".join(status.name for status in _STATUS_FROM[function])
        raise UsageError(
            f"cannot {function} device {address}: it is {current.name}, and only a "
            f"device that is {allowed} can be"
        )
    if confirm:
        typer.confirm(
            f"{function.capitalize()} {address} for good? This cannot be undone",
            abort=True,
            err=True,
        )
    submitter = role_account(
        cfg,
        system,
        registrar_key,
        role="REGISTRAR_ROLE",
        option="--registrar",
        password_file=password_file,
    )
    receipt = system.client.transact(
        getattr(system.devices.functions, function)(address), submitter
    )
    verb = {"suspend": "suspended", "reinstate": "reinstated", "revoke": "revoked"}
    _print_change(cfg, system, address, verb[function], tx_hash(receipt))


@app.command("rotate-key")
@handle_errors
def rotate_key(
    ctx: typer.Context,
    device: DeviceArgument,
    old_key: Annotated[
        str,
        typer.Option(help="The device's current KEY, which consents to the change."),
    ],
    new_key: Annotated[
        str, typer.Option(help="The device's new KEY, which proves possession.")
    ],
    registrar_key: RegistrarOption = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Replace a device's signing key; its address and DID stay the same."""
    cfg = command_settings(ctx)
    system = cfg.system()
    chain_id = system.client.chain_id
    address = resolve_device(cfg, device, chain_id)
    old = cfg.account(old_key, chain_id=chain_id, password_file=password_file)
    new = cfg.account(new_key, chain_id=chain_id, password_file=password_file)
    if old.address == new.address:
        raise UsageError(f"--new-key {new_key!r} is the same key as --old-key")
    current = _require_enrolled(system, address).key
    if current != old.address:
        raise UsageError(
            f"--old-key {old_key!r} is {old.address}, but the current key of device "
            f"{address} is {current}"
        )
    submitter = role_account(
        cfg,
        system,
        registrar_key,
        role="REGISTRAR_ROLE",
        option="--registrar",
        password_file=password_file,
    )
    receipt = registrar.rotate_key(system, submitter, address, old, new)
    _print_change(cfg, system, address, "key rotated", tx_hash(receipt))


@app.command("show")
@handle_errors
def show(
    ctx: typer.Context,
    device: DeviceArgument,
    did_document: Annotated[
        bool,
        typer.Option(
            "--did-document",
            help="Print the device's DID document, built from the chain, instead.",
        ),
    ] = False,
) -> None:
    """Show a device's on-chain record (status, roles, segment, credential, key)."""
    cfg = command_settings(ctx)
    system = cfg.system()
    address = resolve_device(cfg, device, system.client.chain_id)
    if did_document:
        document = build_did_document(system, address)
        if cfg.json_output:
            print_json(document)
        else:
            stdout_console().print_json(json.dumps(document))
        return
    result = device_summary(system, address)
    if cfg.json_output:
        print_json(result)
        return
    table = Table(title=f"Device {address}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for field, value in _human_fields(result):
        table.add_row(field, value)
    stdout_console().print(table)


@app.command("list")
@handle_errors
def list_devices(
    ctx: typer.Context,
    page_size: Annotated[
        int,
        typer.Option(help="Blocks per eth_getLogs request (halved if rejected)."),
    ] = DEFAULT_PAGE_SIZE,
) -> None:
    """List every device enrolled since the deployment, with its current record."""
    cfg = command_settings(ctx)
    check_range("--page-size", page_size, 1, 1_000_000, "blocks")
    system = cfg.system()
    events = read_events(
        system, system.devices.events.DeviceEnrolled, page_size=page_size
    )
    enrolled_at = {str(e["args"]["device"]): int(e["blockNumber"]) for e in events}
    rows = _device_rows(system, enrolled_at)
    if cfg.json_output:
        print_json(rows)
        return

    table = Table(title=f"Enrolled devices ({len(rows)})")
    for column in ("device", "status", "segment", "roles", "credential expires"):
        table.add_column(column, overflow="fold")
    for row in rows:
        expiry = format_time(row["credential_expires_at"])
        if row["credential_expires_at"] and not row["credential_valid"]:
            expiry += " (not valid)"
        table.add_row(
            row["device"],
            row["status"],
            str(row["segment"]),
            str(row["roles"]),
            expiry,
        )
    stdout_console().print(table)


def _device_rows(system: System, enrolled_at: dict[str, int]) -> list[dict[str, Any]]:
    """Read the records of the devices, ``_DEVICES_PER_CALL`` per eth_call."""
    devices = list(enrolled_at)
    now = _chain_time(system)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(devices), _DEVICES_PER_CALL):
        batch = devices[start : start + _DEVICES_PER_CALL]
        records, keys = system.client.call(system.devices.functions.devicesOf(batch))
        for device, record, key in zip(batch, records, keys, strict=True):
            status = registrar.DeviceStatus(record[0])
            expires_at = int(record[3])
            rows.append(
                {
                    "device": device,
                    "status": status.name,
                    "roles": int(record[1]),
                    "segment": int(record[2]),
                    "credential_expires_at": expires_at,
                    "credential_valid": status is registrar.DeviceStatus.ACTIVE
                    and expires_at > now,
                    "key": str(key),
                    "enrolled_at_block": enrolled_at[device],
                }
            )
    return rows


# ---------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------


def resolve_device(cfg: Settings, value: str, chain_id: int) -> ChecksumAddress:
    """Return the address of DEVICE: an address, a did:ethr DID or a keystore name.

    A keystore name gives the address recorded in the keystore file, which is read
    without decrypting it.
    """
    if value.startswith("did:"):
        did_chain, address = parse_did(value)
        if did_chain != chain_id:
            raise UsageError(
                f"DID {value!r} names chain id {did_chain}, but the chain is {chain_id}"
            )
        return address
    if value.lower().startswith("0x"):
        return parse_address(value, "device address")
    path = Path(value) if Path(value).suffix else cfg.keys_dir() / f"{value}.json"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("address")
    except (OSError, ValueError, AttributeError):
        raise UsageError(
            f"invalid device {value!r}: not a 0x address, a did:ethr DID or a "
            f"readable keystore ({path})"
        ) from None
    if not isinstance(recorded, str):
        raise UsageError(
            f"keystore {path} records no address; pass the device's 0x address"
        )
    return parse_address(
        recorded if recorded.startswith("0x") else "0x" + recorded,
        f"address in keystore {path}",
    )


def _require_enrolled(
    system: System, address: ChecksumAddress
) -> registrar.DeviceRecord:
    record = registrar.device_record(system, address)
    if record.status is registrar.DeviceStatus.NONE:
        raise UsageError(
            f"device {address} is not enrolled; enrol it with `ztfm device enrol`"
        )
    return record


def device_summary(system: System, address: ChecksumAddress) -> dict[str, Any]:
    """Return a device's record, measurement and trust score as JSON-ready values."""
    record = registrar.device_record(system, address)
    client = system.client
    measurement = client.call(system.devices.functions.measurementOf(address))
    score = client.call(system.trust.functions.scoreOf(address))
    now = _chain_time(system)
    return {
        "device": address,
        "did": did_for(client.chain_id, address),
        "status": record.status.name,
        "roles": record.roles,
        "segment": record.segment,
        "key": record.key,
        "attested_at": record.attested_at,
        "credential_expires_at": record.credential_expires_at,
        "credential_valid": record.status is registrar.DeviceStatus.ACTIVE
        and record.credential_expires_at > now,
        "measurement": hex0x(measurement),
        "nonce": record.nonce,
        "trust_score": int(score),
    }


def _human_fields(summary: dict[str, Any]) -> list[tuple[str, str]]:
    valid = "valid" if summary["credential_valid"] else "not valid"
    return [
        ("DID", summary["did"]),
        ("status", summary["status"]),
        ("roles", str(summary["roles"])),
        ("segment", str(summary["segment"])),
        ("key", summary["key"]),
        ("attested at", format_time(summary["attested_at"])),
        (
            "credential expires",
            f"{format_time(summary['credential_expires_at'])} ({valid})",
        ),
        ("measurement", summary["measurement"]),
        ("commitment nonce", str(summary["nonce"])),
        ("trust score", f"{summary['trust_score']} basis points"),
    ]


def _print_change(
    cfg: Settings, system: System, address: ChecksumAddress, verb: str, tx: str
) -> None:
    summary = device_summary(system, address)
    if cfg.json_output:
        print_json({**summary, "tx": tx})
        return
    out = stdout_console()
    out.print(f"{verb} {summary['did']}")
    out.print(
        f"status {summary['status']}, segment {summary['segment']}, credential "
        f"expires {format_time(summary['credential_expires_at'])}"
    )
    out.print(f"transaction {tx}")


def _chain_time(system: System) -> int:
    client = system.client
    block = client.read(lambda: client.w3.eth.get_block("latest"))
    return int(block["timestamp"])
