"""The ``ztfm`` command: one Typer app that mounts each command group."""

from __future__ import annotations

import typer

from ztfm_chain.cli import demo, ipfs

app = typer.Typer(
    name="ztfm",
    help="Zero-trust federated learning for IoT fleets, with provenance on an EVM chain.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo.demo)
app.add_typer(ipfs.app, name="ipfs")


@app.callback()
def main() -> None:
    """Zero-trust federated learning for IoT fleets, with provenance on an EVM chain.

    Exit codes: 0 success, 1 unexpected failure, 2 bad argument, setting or file,
    3 content store failure, 4 chain failure or wrong chain.
    """


if __name__ == "__main__":
    app()
