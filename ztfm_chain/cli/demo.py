"""``ztfm demo``: the whole system on one machine, with embedded defaults."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ztfm_chain.chain.models import AggregationRule
from ztfm_chain.cli.common import handle_errors, settings


@handle_errors
def demo(
    ctx: typer.Context,
    devices: Annotated[
        # ztfm_chain.demo.MIN_DEVICES; importing that module here would load torch.
        int, typer.Option(min=18, help="Number of enrolled devices, at least 18.")
    ] = 20,
    rounds: Annotated[int, typer.Option(min=1, help="Number of rounds.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the data split and training.")] = 0,
    rule: Annotated[
        str,
        typer.Option(
            help="Aggregation rule of the model: fedavg (over the updates that pass "
            "the root-set checks), fltrust, multi-krum, median or trimmed-mean."
        ),
    ] = "fedavg",
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
    # Imported here: the demo loads torch and scikit-learn, which `--help` need not.
    from ztfm_chain.demo import ROLES, RULE_LABELS, DemoSettings, run_demo

    config = settings(ctx)
    # With --json, stdout carries only the summary, so progress goes to stderr.
    console = Console(highlight=False, stderr=config.json_output)
    folder = workdir or Path(tempfile.mkdtemp(prefix="ztfm-demo-"))
    console.print(
        f"working folder (kept after the run, with the daemon's log): {folder}"
    )
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
            rule=_rule_id(rule),
        ),
        console.print,
    )
    final = result.rounds[-1].accuracy
    label = RULE_LABELS[_rule_id(rule)]
    summary = {
        "final_accuracy": final,
        "baselines": {k: v[-1] for k, v in result.baselines.items()},
        "report": str(report_dir.resolve() / "report.md"),
        "seconds": round(result.seconds, 1),
    }
    if config.json_output:
        typer.echo(json.dumps(summary, indent=2))
        return
    console.print(f"final accuracy on chain ({label}): {final:.3f}")
    for label, value in summary["baselines"].items():  # type: ignore[attr-defined]
        console.print(f"{label}: {value:.3f}")
    console.print(f"report: {summary['report']} (with accuracy.png and trust.png)")


def _rule_id(name: str) -> AggregationRule:
    from ztfm_chain.aggregator.rounds import RULE_NAMES  # loads torch: only here

    for rule_id, rule_name in RULE_NAMES.items():
        if rule_name == name:
            return rule_id
    raise typer.BadParameter(
        f"unknown rule {name!r}; expected one of {', '.join(RULE_NAMES.values())}"
    )
