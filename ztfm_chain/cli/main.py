"""The ``ztfm`` command: one Typer app that mounts each command group."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from ztfm_chain.cli import (
    aggregator,
    audit,
    chain,
    demo,
    deploy,
    device,
    ipfs,
    model,
    trust,
    update,
)
from ztfm_chain.cli.common import handle_errors, set_debug
from ztfm_chain.cli.settings import Settings

app = typer.Typer(
    name="ztfm",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo.demo)
app.add_typer(ipfs.app, name="ipfs")
app.add_typer(chain.app, name="chain")
app.command("deploy")(deploy.deploy)
app.add_typer(device.app, name="device")
app.add_typer(model.app, name="model")
app.add_typer(update.app, name="update")
app.add_typer(trust.app, name="trust")
app.add_typer(aggregator.app, name="aggregator")
app.add_typer(audit.app, name="audit")


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            help="Folder of keys, manifests, journals and the embedded store "
            "(env ZTFM_HOME, default ~/.ztfm).",
            show_default=False,
        ),
    ] = None,
    rpc_url: Annotated[
        str | None,
        typer.Option(
            help="JSON-RPC URL of the chain (env ZTFM_RPC_URL, config rpc_url, "
            "default: the Anvil of `ztfm chain up`).",
            show_default=False,
        ),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="Content store: a folder (embedded) or a Kubo RPC address such as "
            "/ip4/127.0.0.1/tcp/5001/http (env ZTFM_STORE, config store, "
            "default $ZTFM_HOME/store).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML config file (env ZTFM_CONFIG, default $ZTFM_HOME/config.toml).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")
    ] = False,
    debug: Annotated[
        bool, typer.Option(help="Show tracebacks and debug logs on errors.")
    ] = False,
) -> None:
    """Zero-trust federated learning for IoT fleets, with provenance on an EVM chain.

    Settings come from options, then environment variables (ZTFM_HOME, ZTFM_RPC_URL, ZTFM_STORE, ZTFM_PASSWORD_FILE, ZTFM_PASSWORD), then the config file. Put --json before the command: `ztfm --json device list`.

    Exit codes: 0 success, 1 unexpected failure or an audit that disagrees, 2 bad argument, setting, file, keystore or no chain configured, 3 content store failure, 4 chain failure, wrong chain or a transaction the contracts rejected.
    """
    set_debug(debug)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s %(message)s",
    )
    # Wrapped only after set_debug, so that handle_errors reads this run's --debug.
    ctx.obj = handle_errors(Settings.resolve)(
        home=home,
        rpc_url=rpc_url,
        store=store,
        config_path=config,
        json_output=as_json,
        debug=debug,
    )


if __name__ == "__main__":
    app()
