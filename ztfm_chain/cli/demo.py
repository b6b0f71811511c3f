"""``ztfm demo``: the whole system on one machine, with embedded defaults."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ztfm_chain.cli.common import handle_errors, settings
from ztfm_chain.demo import ROLES, DemoSettings, run_demo


@handle_errors
def demo(
    ctx: typer.Context,
    devices: Annotated[
        int, typer.Option(min=12, help="Number of enrolled devices.")
    ] = 20,
    rounds: Annotated[int, typer.Option(min=1, help="Number of rounds.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the data split and training.")] = 0,
    report_dir: Annotated[
        Path,
        typer.Option(help="Folder for report.md, accuracy.png and trust.png."),
    ] = Path("ztfm-demo-report"),
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the chain manifest, store, journal and daemon log "
            "(default: a new temporary folder)."
        ),
    ] = None,
) -> None:
    """Run federated learning on the digits data set with adversaries, end to end.

    Starts a local Anvil on 127.0.0.1 and the embedded store, deploys the contracts,
    enrols the devices, runs the aggregator as its own daemon process and prints, per
    round, the test accuracy, the rejected updates with their reasons and the trust
    scores. Everything stops when the command ends. The operator accounts are Anvil's
    public development keys: never reuse them on a chain that holds value.
    """
    config = settings(ctx)
    console = Console(highlight=False)
    folder = workdir or Path(tempfile.mkdtemp(prefix="ztfm-demo-"))
    console.print(f"working folder: {folder}")
    console.print(
        "misbehaving parties: "
        + "; ".join(f"dev{i:02d} {what}" for i, what in sorted(ROLES.items()))
        + "; an outsider that was never enrolled"
    )
    result = run_demo(
        DemoSettings(
            workdir=folder,
            report_dir=report_dir,
            devices=devices,
            rounds=rounds,
            seed=seed,
        ),
        console.print,
    )
    final = result.rounds[-1].accuracy
    summary = {
        "final_accuracy": final,
        "baselines": {k: v[-1] for k, v in result.baselines.items()},
        "report": str(report_dir.resolve() / "report.md"),
        "seconds": round(result.seconds, 1),
    }
    if config.json_output:
        typer.echo(json.dumps(summary, indent=2))
        return
    console.print(f"final accuracy on chain (FLTrust): {final:.3f}")
    for label, value in summary["baselines"].items():  # type: ignore[attr-defined]
        console.print(f"{label}: {value:.3f}")
    console.print(f"report: {summary['report']} (with accuracy.png and trust.png)")
