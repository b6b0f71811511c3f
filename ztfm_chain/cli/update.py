"""``ztfm update``: train and commit model updates, and verify a committed update."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from rich.table import Table
from rich.text import Text

from ztfm_chain.chain.deploy import System
from ztfm_chain.chain.models import RoundState, model_info, round_info
from ztfm_chain.cli.chain import (
    check_range,
    command_settings,
    hex0x,
    print_json,
    read_events,
    stderr_console,
    stdout_console,
    tx_hash,
)
from ztfm_chain.cli.common import EXIT_FAILURE, handle_errors
from ztfm_chain.cli.deploy import PasswordFileOption
from ztfm_chain.cli.device import resolve_device
from ztfm_chain.cli.model import ModelArgument, check_model
from ztfm_chain.cli.settings import Settings
from ztfm_chain.exceptions import (
    ChainError,
    ContentMismatch,
    ContentUnavailable,
    StorageError,
    UpdateError,
    UsageError,
)
from ztfm_chain.identity.commitments import Commitment, sign_commitment, submit
from ztfm_chain.storage.base import Store
from ztfm_chain.storage.cid import normalize_cid

if TYPE_CHECKING:
    from ztfm_chain.device.runtime import DeviceStepError
    from ztfm_chain.updates import ModelSchema

app = typer.Typer(
    help="Train and commit model updates as a device, and verify committed updates.",
    no_args_is_help=True,
)

KeyOption = Annotated[
    str,
    typer.Option(
        "--key",
        help="The device's KEY (keystore name, keystore path or dev:N) that signs "
        "the commitment.",
        show_default=False,
    ),
]
DeviceOption = Annotated[
    str | None,
    typer.Option(
        help="Device address, DID or keystore name, when it differs from the --key "
        "address after a key rotation.",
        show_default=False,
    ),
]
RelayerOption = Annotated[
    str | None,
    typer.Option(
        help="KEY that submits the device's signed commitment and pays the gas "
        "(default: the device key submits it).",
        show_default=False,
    ),
]
RoundOption = Annotated[
    int | None,
    typer.Option(
        help="Round number (default: the model's current round, which must be open).",
        show_default=False,
    ),
]


@app.command("train")
@handle_errors
def train(
    ctx: typer.Context,
    model: ModelArgument,
    key: KeyOption,
    data_shard: Annotated[
        int,
        typer.Option(
            help="Which shard of the digits device pool to train on, 0 to N-1."
        ),
    ],
    of: Annotated[
        int, typer.Option(help="N: the number of shards the device pool is split into.")
    ],
    alpha: Annotated[
        float,
        typer.Option(help="Dirichlet concentration of the label skew (smaller: more)."),
    ] = 0.5,
    seed: Annotated[
        int, typer.Option(help="Seed of the data split and of local training.")
    ] = 0,
    epochs: Annotated[int, typer.Option(help="Local training epochs.")] = 2,
    batch_size: Annotated[int, typer.Option(help="Samples per SGD step.")] = 16,
    lr: Annotated[float, typer.Option(help="SGD learning rate.")] = 0.1,
    round: RoundOption = None,
    device: DeviceOption = None,
    relayer: RelayerOption = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Train on one shard of the digits data and commit the update to the round.

    The device pool is that of load_digits_split() with its default seed (1,337
    images), split across N devices with Dirichlet(alpha) label skew.
    """
    cfg = command_settings(ctx)
    check_range("--of", of, 1, 1_337)
    check_range("--data-shard", data_shard, 0, of - 1)
    check_range("--epochs", epochs, 1, 1_000)
    check_range("--batch-size", batch_size, 1, 1_337)
    if not alpha > 0:
        raise UsageError(f"invalid --alpha {alpha}: expected a number > 0")
    if not lr > 0:
        raise UsageError(f"invalid --lr {lr}: expected a number > 0")

    system = cfg.system()
    check_model(system, model)
    round = _open_round_number(system, model, round)
    signer, relay, address = _device_accounts(
        cfg, system, key, device, relayer, password_file
    )

    # torch and scikit-learn load slowly, so only this command imports them.
    from ztfm_chain.device.runtime import (
        DeviceRuntime,
        DeviceStepError,
        TrainingSettings,
    )
    from ztfm_chain.fl.data import dirichlet_split, load_digits_split

    digits = load_digits_split()
    shards = dirichlet_split(digits.pool_y, of, alpha, seed=seed)
    indices = shards[data_shard]
    with cfg.store() as store:
        runtime = DeviceRuntime(
            system,
            store,
            signer,
            digits.pool_x[indices],
            digits.pool_y[indices],
            device=address,
            relayer=relay,
            training=TrainingSettings(epochs=epochs, batch_size=batch_size, lr=lr),
            seed=seed,
        )
        message = (
            f"training on {len(indices)} samples, then committing to round {round}"
        )
        with stderr_console().status(message):
            try:
                sent = runtime.run_round(model, round)
            except DeviceStepError as exc:
                _raise_by_cause(exc)

    result = {
        "model_id": sent.model_id,
        "round": sent.round,
        "device": sent.device,
        "cid": sent.cid,
        "content_hash": hex0x(sent.content_hash),
        "sample_count": sent.sample_count,
        "tx": sent.tx_hash,
        "relayed": sent.relayed,
    }
    _print_submitted(cfg, result)


@app.command("submit")
@handle_errors
def submit_command(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(help="The update: a safetensors file made by encode_update."),
    ],
    model: Annotated[int, typer.Option(help="Model id.", show_default=False)],
    key: KeyOption,
    round: RoundOption = None,
    device: DeviceOption = None,
    relayer: RelayerOption = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Check an update file, store it, sign its commitment and submit it."""
    cfg = command_settings(ctx)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read update file {str(file)!r}: {exc.strerror}"
        ) from None
    system = cfg.system()
    check_model(system, model)
    round = _open_round_number(system, model, round)
    info = model_info(system, model)
    base_hash = round_info(system, model, round).base_model_hash
    signer, relay, address = _device_accounts(
        cfg, system, key, device, relayer, password_file
    )

    from ztfm_chain.updates import decode_update

    with cfg.store() as store:
        schema = _model_schema(system, store, model)
        try:
            decoded = decode_update(
                data,
                schema,
                max_size=info.max_update_bytes,
                max_sample_count=info.max_sample_count,
            )
        except UpdateError as exc:
            raise UsageError(f"invalid update file {str(file)!r}: {exc}") from None
        meta = decoded.meta
        expected = (model, round, hex0x(base_hash))
        found = (meta.model_id, meta.round, meta.base_model_hash)
        if found != expected:
            raise UsageError(
                f"update file {str(file)!r} is for model {found[0]}, round {found[1]}, "
                f"base model {found[2]}, but round {round} of model {model} trains "
                f"from {expected[2]}"
            )
        cid = store.put(data)

    commitment = Commitment(
        model_id=model,
        round=round,
        device=address,
        content_hash=hashlib.sha256(data).digest(),
        cid=cid,
        sample_count=meta.sample_count,
        base_model_hash=base_hash,
    )
    if relay is None:
        receipt = submit(system, signer, commitment)
    else:
        signature = sign_commitment(system, signer, commitment)
        receipt = submit(system, relay, commitment, signature)

    result = {
        "model_id": model,
        "round": round,
        "device": address,
        "cid": cid,
        "content_hash": hex0x(commitment.content_hash),
        "sample_count": meta.sample_count,
        "tx": tx_hash(receipt),
        "relayed": relay is not None,
    }
    _print_submitted(cfg, result)


@dataclass
class Check:
    """One step of ``ztfm update verify`` and its outcome."""

    name: str
    ok: bool
    detail: str


@app.command("verify")
@handle_errors
def verify(
    ctx: typer.Context,
    cid: Annotated[str, typer.Argument(help="CID of the committed update.")],
    model: Annotated[int, typer.Option(help="Model id.", show_default=False)],
    round: Annotated[int, typer.Option(help="Round number.", show_default=False)],
    device: Annotated[
        str,
        typer.Option(
            help="Device address, DID or keystore name that committed the update.",
            show_default=False,
        ),
    ],
) -> None:
    """Check a committed update: its CID, its hash on chain and its decoding.

    Exits 0 when every check passes and 1 when one fails.
    """
    cfg = command_settings(ctx)
    cid = normalize_cid(cid)
    system = cfg.system()
    check_model(system, model)
    address = resolve_device(cfg, device, system.client.chain_id)
    with cfg.store() as store:
        checks = _verify_checks(system, store, cid, model, round, address)

    passed = all(check.ok for check in checks)
    if cfg.json_output:
        print_json(
            {
                "cid": cid,
                "model_id": model,
                "round": round,
                "device": address,
                "ok": passed,
                "checks": [check.__dict__ for check in checks],
            }
        )
    else:
        table = Table(title=f"Update {cid}")
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail", overflow="fold")
        for check in checks:
            mark = (
                Text("ok", style="green") if check.ok else Text("FAILED", style="red")
            )
            table.add_row(check.name, mark, check.detail)
        stdout_console().print(table)
    if not passed:
        raise typer.Exit(EXIT_FAILURE)


def _verify_checks(
    system: System,
    store: Store,
    cid: str,
    model: int,
    round: int,
    device: ChecksumAddress,
) -> list[Check]:
    checks: list[Check] = []
    try:
        data = store.get(cid)
    except (ContentUnavailable, ContentMismatch) as exc:
        return [Check("fetch", False, str(exc))]
    checks.append(Check("fetch", True, f"{len(data)} bytes, matching the CID"))

    events = read_events(
        system,
        system.models.events.UpdateCommitted,
        argument_filters={"modelId": model, "round": round, "device": device},
    )
    if not events:
        checks.append(
            Check(
                "commitment",
                False,
                f"no UpdateCommitted event of {device} in round {round} of model {model}",
            )
        )
        return checks
    event = events[-1]
    args = event["args"]
    checks.append(
        Check("commitment", True, f"block {event['blockNumber']}, tx {tx_hash(event)}")
    )

    committed_cid = str(args["cid"])
    same_cid = _same_cid(committed_cid, cid)
    checks.append(
        Check(
            "CID",
            same_cid,
            "as committed" if same_cid else f"committed {committed_cid}",
        )
    )
    actual = hashlib.sha256(data).digest()
    committed = bytes(args["contentHash"])
    if actual == committed:
        checks.append(Check("SHA-256", True, f"{hex0x(actual)}, as committed"))
    else:
        detail = f"bytes {hex0x(actual)}, committed {hex0x(committed)}"
        checks.append(Check("SHA-256", False, detail))
    checks.append(_decode_check(system, store, data, model, round, args))
    return checks


def _decode_check(
    system: System,
    store: Store,
    data: bytes,
    model: int,
    round: int,
    args: Any,
) -> Check:
    from ztfm_chain.updates import decode_update

    info = model_info(system, model)
    try:
        schema = _model_schema(system, store, model)
        decoded = decode_update(
            data,
            schema,
            max_size=info.max_update_bytes,
            max_sample_count=info.max_sample_count,
        )
    except (UpdateError, StorageError, UsageError) as exc:
        return Check("decode", False, str(exc))
    meta = decoded.meta
    problems = []
    if meta.model_id != model or meta.round != round:
        problems.append(f"metadata names model {meta.model_id}, round {meta.round}")
    if meta.sample_count != int(args["sampleCount"]):
        problems.append(
            f"sample count {meta.sample_count} differs from the committed "
            f"{args['sampleCount']}"
        )
    if meta.base_model_hash != hex0x(bytes(args["baseModelHash"])):
        problems.append(
            f"base model {meta.base_model_hash} differs from the committed "
            f"{hex0x(bytes(args['baseModelHash']))}"
        )
    if problems:
        return Check("decode", False, "; ".join(problems))
    tensors = len(decoded.tensors)
    return Check(
        "decode",
        True,
        f"{tensors} tensors match the model schema; {meta.kind}, "
        f"{meta.sample_count} samples",
    )


# ---------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------


def _open_round_number(system: System, model: int, round: int | None) -> int:
    current = model_info(system, model).current_round
    number = current if round is None else round
    state = round_info(system, model, number).state if number else RoundState.NONE
    if number != current or state is not RoundState.OPEN:
        current_state = round_info(system, model, current).state if current else None
        hint = (
            f"round {current} is open: pass --round {current} or leave --round out"
            if current_state is RoundState.OPEN
            else f"open one with `ztfm model open-round {model}`"
        )
        raise UsageError(
            f"round {number} of model {model} is not open (state {state.name}, current "
            f"round {current}); {hint}"
        )
    return number


def _device_accounts(
    cfg: Settings,
    system: System,
    key: str,
    device: str | None,
    relayer: str | None,
    password_file: Path | None,
) -> tuple[LocalAccount, LocalAccount | None, ChecksumAddress]:
    chain_id = system.client.chain_id
    signer = cfg.account(key, chain_id=chain_id, password_file=password_file)
    relay = None
    if relayer is not None:
        relay = cfg.account(relayer, chain_id=chain_id, password_file=password_file)
    address = (
        signer.address if device is None else resolve_device(cfg, device, chain_id)
    )
    return signer, relay, address


def _model_schema(system: System, store: Store, model: int) -> ModelSchema:
    from ztfm_chain.globalmodel import fetch_base_model

    return fetch_base_model(system, store, model).schema


def _same_cid(first: str, second: str) -> bool:
    try:
        return normalize_cid(first) == normalize_cid(second)
    except UsageError:
        return False


def _raise_by_cause(exc: DeviceStepError) -> NoReturn:
    """Re-raise a device step error as its cause's kind, for the exit code."""
    cause = exc.__cause__
    for kind in (UsageError, StorageError, ChainError):
        if isinstance(cause, kind):
            raise kind(str(exc)) from exc
    raise exc


def _print_submitted(cfg: Settings, result: dict[str, Any]) -> None:
    if cfg.json_output:
        print_json(result)
        return
    out = stdout_console()
    sender = "relayed" if result["relayed"] else "sent by the device key"
    out.print(
        f"committed update of {result['device']} to round {result['round']} of "
        f"model {result['model_id']} ({sender})"
    )
    out.print(f"CID          {result['cid']}")
    out.print(f"content hash {result['content_hash']} (SHA-256)")
    out.print(f"samples      {result['sample_count']}")
    out.print(f"transaction  {result['tx']}")
