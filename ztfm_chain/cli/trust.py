"""``ztfm trust``: devices' trust scores and the history of their changes."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from ztfm_chain.aggregator.reasons import Reason
from ztfm_chain.chain.events import DEFAULT_PAGE_SIZE
from ztfm_chain.cli.chain import (
    check_range,
    command_settings,
    format_time,
    print_json,
    read_events,
    stdout_console,
)
from ztfm_chain.cli.common import handle_errors
from ztfm_chain.cli.device import resolve_device

#: TrustRegistry.MAX_SCORE. The constant is repeated here because importing
#: ztfm_chain.fl would load torch for every CLI command.
MAX_SCORE = 10_000

app = typer.Typer(
    help="Show devices' trust scores (basis points, 0 to 10000) and their history, "
    "or set one by hand.",
    no_args_is_help=True,
)


@app.command("show")
@handle_errors
def show(
    ctx: typer.Context,
    devices: Annotated[
        list[str],
        typer.Argument(
            metavar="DEVICE",
            help="Devices: 0x addresses, did:ethr DIDs or keystore names.",
        ),
    ],
) -> None:
    """Show the current trust score of each device."""
    cfg = command_settings(ctx)
    system = cfg.system()
    chain_id = system.client.chain_id
    addresses = [resolve_device(cfg, device, chain_id) for device in devices]

    rows: list[dict[str, Any]] = []
    for address in addresses:
        score, updated_at, updates = system.client.call(
            system.trust.functions.scoreRecordOf(address)
        )
        rows.append(
            {
                "device": address,
                "score": int(score),
                "updated_at": int(updated_at),
                "updates": int(updates),
            }
        )
    if cfg.json_output:
        print_json(rows)
        return

    table = Table(title="Trust scores")
    table.add_column("device", overflow="fold")
    table.add_column("score (bps)", justify="right")
    table.add_column("changes", justify="right")
    table.add_column("last change")
    for row in rows:
        last = format_time(row["updated_at"])
        if row["updates"] == 0:
            last = "never scored (initial score)"
        table.add_row(row["device"], str(row["score"]), str(row["updates"]), last)
    stdout_console().print(table)


@app.command("set")
@handle_errors
def set_score(
    ctx: typer.Context,
    device: Annotated[
        str,
        typer.Argument(help="Device: 0x address, did:ethr DID or keystore name."),
    ],
    score: Annotated[
        int,
        typer.Argument(help="New trust score in basis points (0 to 10000)."),
    ],
    model: Annotated[
        int, typer.Option(help="Model whose aggregator key signs the change.")
    ],
    key: Annotated[
        str,
        typer.Option(
            help="Aggregator key of the model: keystore path or name, or dev:N."
        ),
    ],
) -> None:
    """Set a device's trust score by hand, with reason OPERATOR_SET.

    A device below its model's minimum trust cannot commit, so its score does not
    recover by itself. This lets an operator readmit it, or lower a suspect device.
    The TrustRegistry accepts the change only from an aggregator of the model and
    for a device that takes part in it.
    """
    check_range("SCORE", score, 0, MAX_SCORE, "basis points")
    cfg = command_settings(ctx)
    system = cfg.system()
    address = resolve_device(cfg, device, system.client.chain_id)
    account = cfg.account(key, chain_id=system.client.chain_id)
    old = int(system.client.call(system.trust.functions.scoreOf(address)))
    receipt = system.client.transact(
        system.trust.functions.setScores(
            model, [address], [score], [int(Reason.OPERATOR_SET)]
        ),
        account,
    )
    result = {
        "device": address,
        "model_id": model,
        "old_score": old,
        "new_score": score,
        "tx_hash": "0x" + bytes(receipt["transactionHash"]).hex(),
    }
    if cfg.json_output:
        print_json(result)
        return
    stdout_console().print(
        f"trust of {address} in model {model}: {old} -> {score} bps "
        f"(tx {result['tx_hash']})"
    )


@app.command("history")
@handle_errors
def history(
    ctx: typer.Context,
    device: Annotated[
        str,
        typer.Argument(
            metavar="DEVICE",
            help="The device: its 0x address, its did:ethr DID or its keystore name.",
        ),
    ],
    model: Annotated[
        int | None,
        typer.Option(help="Only changes made for this model id.", show_default=False),
    ] = None,
    page_size: Annotated[
        int,
        typer.Option(help="Blocks per eth_getLogs request (halved if rejected)."),
    ] = DEFAULT_PAGE_SIZE,
) -> None:
    """List every change of a device's trust score, oldest first, with its reason."""
    cfg = command_settings(ctx)
    check_range("--page-size", page_size, 1, 1_000_000, "blocks")
    system = cfg.system()
    address = resolve_device(cfg, device, system.client.chain_id)
    filters: dict[str, Any] = {"device": address}
    if model is not None:
        filters["modelId"] = model
    events = read_events(
        system,
        system.trust.events.TrustScoreChanged,
        argument_filters=filters,
        page_size=page_size,
    )

    rows: list[dict[str, Any]] = [
        {
            "block": int(event["blockNumber"]),
            "model_id": int(event["args"]["modelId"]),
            "old_score": int(event["args"]["oldScore"]),
            "new_score": int(event["args"]["newScore"]),
            "reason": reason_name(int(event["args"]["reason"])),
            "aggregator": str(event["args"]["aggregator"]),
        }
        for event in events
    ]
    if cfg.json_output:
        print_json(rows)
        return

    table = Table(title=f"Trust score changes of {address}")
    for column in ("block", "model", "old", "new", "reason"):
        table.add_column(column, justify="left" if column == "reason" else "right")
    for row in rows:
        table.add_row(
            str(row["block"]),
            str(row["model_id"]),
            str(row["old_score"]),
            str(row["new_score"]),
            row["reason"],
        )
    stdout_console().print(table)


def reason_name(code: int) -> str:
    """Return the Reason name of a stored reason code, or UNKNOWN(code)."""
    try:
        return Reason(code).name
    except ValueError:
        return f"UNKNOWN({code})"
