"""``ztfm audit``: re-verify finished rounds from chain data and the store alone."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ztfm_chain.cli.common import EXIT_FAILURE, handle_errors, settings

app = typer.Typer(help="Re-verify what aggregators finalized.", no_args_is_help=True)


@app.command("round")
@handle_errors
def round_(
    ctx: typer.Context,
    model: Annotated[int, typer.Argument(help="Model id.")],
    round: Annotated[int, typer.Argument(help="Round number.")],
    root_digits: Annotated[
        bool,
        typer.Option(
            help="Repeat the root-set loss check with the 100-image digits root set, "
            "as an aggregator run with --root-digits does."
        ),
    ] = False,
) -> None:
    """Repeat every check of a finished round and compare with the chain.

    Needs no access to the aggregator's journal. Exits 1 when the audit disagrees
    with what was finalized, listing each disagreement.
    """
    # torch and scikit-learn load slowly, so only this command imports them.
    from ztfm_chain.aggregator.audit import audit_round
    from ztfm_chain.aggregator.rounds import RootData
    from ztfm_chain.fl.data import load_digits_split

    config = settings(ctx)
    root = None
    if root_digits:
        split = load_digits_split(seed=0)
        root = RootData(split.root_x, split.root_y)
    err = Console(stderr=True)
    if not config.json_output:
        for name, value in config.describe().items():
            err.print(f"{name}: {value}")
    result = audit_round(config.system(), config.store(), model, round, root=root)
    if config.json_output:
        typer.echo(
            json.dumps(
                {
                    "model_id": result.model_id,
                    "round": result.round,
                    "state": result.state,
                    "ok": result.ok,
                    "reasons": result.reasons,
                    "disagreements": result.disagreements,
                },
                indent=2,
            )
        )
    else:
        table = Table(title=f"Audit of model {model} round {round} ({result.state})")
        table.add_column("device")
        table.add_column("auditor's verdict")
        for device, reason in result.reasons.items():
            table.add_row(device, reason)
        Console().print(table)
        if result.ok:
            Console().print("The audit agrees with everything finalized on chain.")
        for line in result.disagreements:
            err.print(f"disagreement: {line}")
    if not result.ok:
        raise typer.Exit(code=EXIT_FAILURE)
