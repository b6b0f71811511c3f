"""``ztfm model``: create models, open rounds and show their state."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ztfm_chain.chain.deploy import System
from ztfm_chain.chain.models import (
    AggregationRule,
    ModelInfo,
    ModelParams,
    RoundInfo,
    RoundState,
    create_model,
    model_info,
    open_round,
    round_info,
)
from ztfm_chain.cli.chain import (
    check_range,
    command_settings,
    format_time,
    hex0x,
    print_json,
    read_events,
    stderr_console,
    stdout_console,
    tx_hash,
)
from ztfm_chain.cli.common import handle_errors
from ztfm_chain.cli.deploy import PasswordFileOption, account_address, role_account
from ztfm_chain.exceptions import UsageError

_UINT16_MAX = 2**16 - 1
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_DEFAULTS = ModelParams()

app = typer.Typer(
    help="Create models from a base model, open training rounds and show their state.",
    no_args_is_help=True,
)

ModelArgument = Annotated[
    int, typer.Argument(metavar="MODEL", help="Model id, counted from 1.")
]


@app.command("create")
@handle_errors
def create(
    ctx: typer.Context,
    base: Annotated[
        Path | None,
        typer.Option(
            help="Base model: a safetensors file of an MLP state dict (keys "
            "layers.<i>.weight and layers.<i>.bias).",
            show_default=False,
        ),
    ] = None,
    digits: Annotated[
        bool,
        typer.Option(
            "--digits",
            help="Use the built-in MLP for the 8x8 digits data (64-128-10), "
            "initialised from --seed.",
        ),
    ] = False,
    seed: Annotated[
        int, typer.Option(help="Seed of the --digits initial weights.")
    ] = 0,
    rule: Annotated[
        str,
        typer.Option(
            help="Aggregation rule: fedavg, trimmed-mean, median, multi-krum or "
            "fltrust."
        ),
    ] = "fltrust",
    quorum: Annotated[
        int,
        typer.Option(help="Accepted updates a round needs to produce a new model."),
    ] = 3,
    round_duration: Annotated[
        int, typer.Option(help="Seconds a round takes commitments.")
    ] = 3600,
    min_trust: Annotated[
        int,
        typer.Option(help="Trust score a device needs to commit, in basis points."),
    ] = _DEFAULTS.min_trust,
    required_roles: Annotated[
        int,
        typer.Option(help="Role bits a device needs (1: trainer; 0 to 65535)."),
    ] = _DEFAULTS.required_roles,
    segment: Annotated[
        list[int] | None,
        typer.Option(
            help="Network segment whose devices may train; repeat for several "
            "(default 1).",
            show_default=False,
        ),
    ] = None,
    aggregator: Annotated[
        list[str] | None,
        typer.Option(
            help="0x address or KEY that may aggregate; repeat for several (default: "
            "every AGGREGATOR_ROLE holder in the manifest).",
            show_default=False,
        ),
    ] = None,
    max_update_bytes: Annotated[
        int, typer.Option(help="Largest update accepted, in bytes.")
    ] = _DEFAULTS.max_update_bytes,
    max_sample_count: Annotated[
        int, typer.Option(help="Largest sample count an update may claim.")
    ] = _DEFAULTS.max_sample_count,
    manager: Annotated[
        str | None,
        typer.Option(
            help="KEY with MODEL_MANAGER_ROLE that creates and owns the model "
            "(default on 31337: the development key that has it).",
            show_default=False,
        ),
    ] = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Store a base model and create a model that trains from it."""
    cfg = command_settings(ctx)
    if (base is None) == (not digits):
        raise UsageError("give exactly one of --base FILE and --digits")
    params = ModelParams(
        min_trust=check_range("--min-trust", min_trust, 0, 10_000, "basis points"),
        required_roles=check_range("--required-roles", required_roles, 0, _UINT16_MAX),
        quorum=check_range("--quorum", quorum, 1, _UINT32_MAX),
        round_duration=check_range(
            "--round-duration", round_duration, 1, _UINT32_MAX, "seconds"
        ),
        max_update_bytes=check_range(
            "--max-update-bytes", max_update_bytes, 1, _UINT64_MAX, "bytes"
        ),
        max_sample_count=check_range(
            "--max-sample-count", max_sample_count, 1, _UINT32_MAX
        ),
        aggregation_rule=parse_rule(rule),
    )

    segments = [check_range("--segment", s, 0, _UINT32_MAX) for s in segment or [1]]
    data = _base_model_bytes(base, seed)

    system = cfg.system()
    chain_id = system.client.chain_id
    aggregators: list[str]
    if aggregator:
        aggregators = [
            account_address(cfg, value, chain_id, "--aggregator", password_file)
            for value in aggregator
        ]
    else:
        aggregators = list(system.deployment.roles.get("AGGREGATOR_ROLE", []))
    owner = role_account(
        cfg,
        system,
        manager,
        role="MODEL_MANAGER_ROLE",
        option="--manager",
        password_file=password_file,
    )

    with cfg.store() as store:
        cid = store.put(data)
    model_id = create_model(
        system,
        owner,
        base_model_hash=hashlib.sha256(data).digest(),
        base_model_cid=cid,
        params=params,
        segments=segments,
        aggregators=aggregators,
    )

    result = {
        **model_summary(system, model_id),
        "segments": segments,
        "aggregators": aggregators,
    }
    if cfg.json_output:
        print_json(result)
        return

    out = stdout_console()
    out.print(f"created model {model_id}, owned by {owner.address}")
    out.print(
        f"base model {cid} (SHA-256 {result['base_model_hash']}, {len(data)} bytes)"
    )
    out.print(f"segments {segments}; aggregators {', '.join(aggregators) or 'none'}")
    out.print(f"open round 1 with `ztfm model open-round {model_id}`")


def parse_rule(name: str) -> int:
    """Return the AggregationRule id of a rule name such as trimmed-mean."""
    key = name.strip().upper().replace("-", "_")
    if key not in AggregationRule.__members__:
        choices = ", ".join(r.name.lower().replace("_", "-") for r in AggregationRule)
        raise UsageError(f"invalid --rule {name!r}: expected one of {choices}")
    return int(AggregationRule[key])


def _base_model_bytes(base: Path | None, seed: int) -> bytes:
    # torch and safetensors load slowly, so only the commands that need them do.
    import safetensors
    import safetensors.torch

    from ztfm_chain.fl.models import DIGITS_WIDTHS, init_mlp_state, mlp_widths
    from ztfm_chain.updates import encode_model

    if base is None:
        return encode_model(init_mlp_state(DIGITS_WIDTHS, seed=seed))
    try:
        raw = base.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --base {str(base)!r}: {exc.strerror}") from None
    try:
        tensors = safetensors.torch.load(raw)
    except safetensors.SafetensorError as exc:
        raise UsageError(
            f"invalid --base {str(base)!r}: not a safetensors file ({exc})"
        ) from None
    try:
        mlp_widths(tensors)
    except UsageError as exc:
        raise UsageError(f"invalid --base {str(base)!r}: {exc}") from None
    # Devices check the stored bytes against the hash on chain and decode them as a
    # canonical global model, so the file is stored re-encoded in that form.
    return encode_model(tensors)


@app.command("open-round")
@handle_errors
def open_round_command(
    ctx: typer.Context,
    model: ModelArgument,
    operator: Annotated[
        str | None,
        typer.Option(
            help="KEY of the model's owner or one of its aggregators (default on "
            "31337: the development key with MODEL_MANAGER_ROLE).",
            show_default=False,
        ),
    ] = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Open the model's next round; the previous one must be finalized or failed."""
    cfg = command_settings(ctx)
    system = cfg.system()
    check_model(system, model)
    account = role_account(
        cfg,
        system,
        operator,
        role="MODEL_MANAGER_ROLE",
        option="--operator",
        password_file=password_file,
    )
    round = open_round(system, account, model)
    info = round_info(system, model, round)
    result = {"model_id": model, **round_summary(round, info)}
    if cfg.json_output:
        print_json(result)
        return
    stdout_console().print(
        f"opened round {round} of model {model}; it takes commitments until "
        f"{format_time(info.deadline)}"
    )


@app.command("status")
@handle_errors
def status(ctx: typer.Context, model: ModelArgument) -> None:
    """Show a model's settings, global model and current round."""
    cfg = command_settings(ctx)
    system = cfg.system()
    check_model(system, model)
    result = model_summary(system, model)
    if cfg.json_output:
        print_json(result)
        return
    table = Table(title=f"Model {model}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for field, value in _human_fields(result):
        table.add_row(field, value)
    stdout_console().print(table)


def _human_fields(summary: dict[str, Any]) -> list[tuple[str, str]]:
    fields = [
        ("owner", summary["owner"]),
        ("aggregation rule", summary["aggregation_rule"]),
        ("quorum", f"{summary['quorum']} accepted updates"),
        ("round duration", f"{summary['round_duration']} seconds"),
        ("min trust", f"{summary['min_trust']} basis points"),
        ("required roles", str(summary["required_roles"])),
        ("max update size", f"{summary['max_update_bytes']} bytes"),
        ("max sample count", str(summary["max_sample_count"])),
        ("base model", f"{summary['base_model_cid']}\n{summary['base_model_hash']}"),
        (
            "global model",
            f"{summary['global_model_cid']}\n{summary['global_model_hash']}",
        ),
        ("current round", str(summary["current_round"] or "none opened yet")),
    ]
    current = summary["current_round_info"]
    if current is not None:
        fields += [
            ("round state", current["state"]),
            ("round deadline", format_time(current["deadline"])),
            ("accepted updates", str(current["accepted_count"])),
        ]
    return fields


@app.command("rounds")
@handle_errors
def rounds(ctx: typer.Context, model: ModelArgument) -> None:
    """List a model's rounds with their outcome and verification report CID."""
    cfg = command_settings(ctx)
    system = cfg.system()
    check_model(system, model)
    info = model_info(system, model)
    outcomes: dict[int, dict[str, Any]] = {}
    models = system.models.events
    for event in read_events(
        system, models.RoundFinalized, argument_filters={"modelId": model}
    ):
        args = event["args"]
        outcomes[int(args["round"])] = {
            "new_model_cid": args["newModelCid"],
            "report_cid": args["reportCid"],
            "outcome_tx": tx_hash(event),
        }
    for event in read_events(
        system, models.RoundFailed, argument_filters={"modelId": model}
    ):
        args = event["args"]
        outcomes[int(args["round"])] = {
            "new_model_cid": None,
            "report_cid": args["reportCid"],
            "outcome_tx": tx_hash(event),
        }

    rows = []
    with stderr_console().status(f"reading {info.current_round} rounds"):
        for number in range(1, info.current_round + 1):
            summary = round_summary(number, round_info(system, model, number))
            pending = {"new_model_cid": None, "report_cid": None, "outcome_tx": None}
            rows.append({**summary, **outcomes.get(number, pending)})
    if cfg.json_output:
        print_json(rows)
        return

    table = Table(title=f"Rounds of model {model}")
    for column in ("round", "state", "accepted", "new model hash", "report CID"):
        table.add_column(column, overflow="fold")
    for row in rows:
        new_hash = row["new_model_hash"]
        table.add_row(
            str(row["round"]),
            row["state"],
            str(row["accepted_count"]),
            "-" if int(new_hash, 16) == 0 else new_hash,
            row["report_cid"] or "-",
        )
    stdout_console().print(table)


# ---------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------


def check_model(system: System, model_id: int) -> None:
    """Raise UsageError naming the valid ids when ``model_id`` does not exist."""
    count = int(system.client.call(system.models.functions.modelCount()))
    if not 1 <= model_id <= count:
        known = f"ids 1 to {count}" if count else "no models yet"
        raise UsageError(
            f"model {model_id} not found: the ModelRegistry at "
            f"{system.deployment.model_registry} has {known}"
        )


def model_summary(system: System, model_id: int) -> dict[str, Any]:
    """Return a model's record and current round as JSON-ready values."""
    info: ModelInfo = model_info(system, model_id)
    current = None
    if info.current_round:
        current = round_summary(
            info.current_round, round_info(system, model_id, info.current_round)
        )
    return {
        "model_id": model_id,
        "owner": info.owner,
        "aggregation_rule": AggregationRule(info.aggregation_rule).name,
        "quorum": info.quorum,
        "round_duration": info.round_duration,
        "min_trust": info.min_trust,
        "required_roles": info.required_roles,
        "max_update_bytes": info.max_update_bytes,
        "max_sample_count": info.max_sample_count,
        "base_model_hash": hex0x(info.base_model_hash),
        "base_model_cid": info.base_model_cid,
        "global_model_hash": hex0x(info.global_model_hash),
        "global_model_cid": info.global_model_cid,
        "current_round": info.current_round,
        "current_round_info": current,
    }


def round_summary(number: int, info: RoundInfo) -> dict[str, Any]:
    """Return a round's record as JSON-ready values."""
    values = asdict(info)
    for key in ("base_model_hash", "new_model_hash", "accepted_digest", "report_hash"):
        values[key] = hex0x(values[key])
    values["state"] = RoundState(info.state).name
    return {"round": number, **values}
