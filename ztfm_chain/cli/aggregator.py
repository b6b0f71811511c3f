"""``ztfm aggregator``: run the aggregator daemon."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from ztfm_chain import logs
from ztfm_chain.cli.common import handle_errors, settings

if TYPE_CHECKING:
    from ztfm_chain.aggregator.daemon import Aggregator

# Defaults of the behavioural checks, repeated here so that `ztfm --help` does not
# import torch; a test checks them against AnomalySettings.
DEFAULT_MIN_COSINE = 0.0
DEFAULT_MAX_NORM_RATIO = 5.0

app = typer.Typer(help="Run the aggregator daemon.", no_args_is_help=True)
log = logging.getLogger(__name__)


@app.command("run")
@handle_errors
def run(
    ctx: typer.Context,
    key: Annotated[
        str, typer.Option(help="Aggregator key: keystore path or name, or dev:N.")
    ],
    model: Annotated[
        list[int], typer.Option(help="Model id to aggregate; repeat for several.")
    ],
    confirmations: Annotated[
        int, typer.Option(help="Blocks an event must be buried under before use.")
    ] = 0,
    poll_interval: Annotated[
        float, typer.Option(help="Seconds between passes over the chain.")
    ] = 1.0,
    close_after: Annotated[
        int | None,
        typer.Option(help="Close a round early once it has this many commitments."),
    ] = None,
    close_when_all_committed: Annotated[
        bool,
        typer.Option(
            help="Close a round early once every device the contract would accept "
            "a commitment from has committed."
        ),
    ] = False,
    open_rounds: Annotated[
        bool, typer.Option(help="Open the next round after each finalized one.")
    ] = False,
    max_rounds: Annotated[
        int | None, typer.Option(help="Open no round beyond this number.")
    ] = None,
    exit_when_done: Annotated[
        bool, typer.Option(help="Exit once every model finished --max-rounds rounds.")
    ] = False,
    root_digits: Annotated[
        bool,
        typer.Option(
            help="Use the aggregator's own 100-image digits root set for the FLTrust "
            "reference (disjoint from the devices' pool and the test set)."
        ),
    ] = False,
    content_grace: Annotated[
        float,
        typer.Option(help="Seconds after a deadline to wait for missing content."),
    ] = 30.0,
    min_cosine: Annotated[
        float,
        typer.Option(
            help="Flag updates whose cosine to the reference is at most this."
        ),
    ] = DEFAULT_MIN_COSINE,
    max_norm_ratio: Annotated[
        float, typer.Option(help="Flag updates longer than this times the reference.")
    ] = DEFAULT_MAX_NORM_RATIO,
    root_loss: Annotated[
        bool,
        typer.Option(
            help="With --root-digits, also flag updates by their effect on the "
            "root-set loss. Its thresholds are calibrated on the digits demo only "
            "(see docs/aggregation.md)."
        ),
    ] = False,
    journal: Annotated[
        Path | None,
        typer.Option(help="Journal file (default: $ZTFM_HOME/aggregator/...)."),
    ] = None,
    log_format: Annotated[
        str, typer.Option(help="Log format on stderr: text or json.")
    ] = "text",
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT (0: any port)."),
    ] = None,
) -> None:
    """Verify, aggregate and finalize rounds until stopped (SIGTERM or Ctrl-C).

    Every commitment is checked against the chain, and updates fetched from the store
    are verified before they are decoded. The new global model and a verification
    report go to the store, then each round is finalized on chain and the trust
    scores are written back.
    """
    # Imported here: torch and scikit-learn take seconds to load, and only this
    # command of the CLI needs them.
    from ztfm_chain.aggregator.daemon import (
        Aggregator,
        AggregatorSettings,
        Metrics,
        open_journal,
    )
    from ztfm_chain.aggregator.journal import Journal
    from ztfm_chain.aggregator.rounds import AnomalySettings, RootData
    from ztfm_chain.fl.data import load_digits_split

    if log_format not in ("text", "json"):
        raise typer.BadParameter(f"expected text or json, got {log_format!r}")
    logs.configure(
        logging.DEBUG if settings(ctx).debug else logging.INFO,
        json_format=log_format == "json",
    )
    config = settings(ctx)
    system = config.system()
    account = config.account(key, chain_id=system.client.chain_id)
    store = config.store()
    log.info(
        "aggregator.config chain=%s store=%s account=%s",
        config.rpc_url,
        config.store_location,
        account.address,
    )
    root = None
    if root_digits:
        split = load_digits_split(seed=0)
        root = RootData(split.root_x, split.root_y)
    journal_db = (
        Journal(journal)
        if journal
        else open_journal(config.home, system.client.chain_id, account.address)
    )
    metrics = Metrics()
    if metrics_port is not None:
        port = metrics.serve(metrics_port)
        log.info("metrics.serving url=http://127.0.0.1:%s/metrics", port)
    daemon = Aggregator(
        system,
        store,
        account,
        journal_db,
        AggregatorSettings(
            models=tuple(model),
            confirmations=confirmations,
            poll_interval=poll_interval,
            content_grace=content_grace,
            close_after=close_after,
            close_when_all_committed=close_when_all_committed,
            open_rounds=open_rounds,
            max_rounds=max_rounds,
            root=root,
            anomaly=AnomalySettings(
                min_cosine=min_cosine,
                max_norm_ratio=max_norm_ratio,
                root_loss=root_loss,
            ),
            stall_after=os.environ.get("ZTFM_AGGREGATOR_STALL_AFTER") or None,
        ),
        metrics,
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("aggregator.stop_requested signal=%s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if exit_when_done:
        watcher = threading.Thread(
            target=_stop_when_done, args=(daemon, stop), daemon=True
        )
        watcher.start()
    try:
        daemon.run(stop)
    finally:
        metrics.close()
        journal_db.close()


def _stop_when_done(daemon: Aggregator, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        if daemon.finished():
            log.info("aggregator.all_rounds_done")
            stop.set()
