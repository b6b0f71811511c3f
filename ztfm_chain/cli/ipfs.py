"""``ztfm ipfs``: add and read content-addressed objects."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from ztfm_chain.cli.common import settings
from ztfm_chain.exceptions import StorageError, UsageError
from ztfm_chain.storage import Store, default_store_location, open_store

# ipfshttpclient 0.7.0 passes urllib3 an argument that urllib3 2.x deprecates, and
# the warning would break the one-line error output of these commands.
warnings.filterwarnings(
    "ignore",
    message="The 'strict' parameter is no longer needed",
    category=FutureWarning,
)

EXIT_USAGE = 2
EXIT_STORAGE = 3

app = typer.Typer(
    help=(
        "Add objects to the store and read them back, verified against their CID. "
        "The store is the subcommand's --store, else the global store setting: "
        "ztfm --store, $ZTFM_STORE, the config file's store, then $ZTFM_HOME/store "
        "(ZTFM_HOME defaults to ~/.ztfm). "
        "Exit codes: 0 success; 2 usage error (invalid argument, CID, input file "
        "or store location); 3 storage error (CID not found, node unreachable, "
        "content mismatch, object too large)."
    ),
    no_args_is_help=True,
)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help=(
            "Store location: a directory or file:// URL (embedded store), or a "
            "Kubo RPC API as a multiaddr (/ip4/127.0.0.1/tcp/5001/http) or URL "
            "(http://127.0.0.1:5001). Default: the global store setting "
            "(ztfm --store, $ZTFM_STORE, the config file, $ZTFM_HOME/store)."
        ),
        show_default=False,
    ),
]


@contextlib.contextmanager
def _exit_on_error() -> Iterator[None]:
    """Turn a UsageError or StorageError into one stderr line and an exit code."""
    try:
        yield
    except UsageError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_USAGE) from err
    except StorageError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_STORAGE) from err


def _open(ctx: typer.Context, store: str | None, cid_version: int = 1) -> Store:
    """Open ``store``, else the store of the global settings."""
    if store is None:
        resolved = settings(ctx)
        store = resolved.store_location if resolved is not None else None
    return open_store(store or default_store_location(), cid_version=cid_version)


def _read_input(file: Path, max_object_size: int) -> bytes:
    """Read ``file`` (``-`` is standard input), at most ``max_object_size`` + 1 bytes.

    Reading one byte past the limit lets the store report an object that is too
    large, without reading all of it.
    """
    if str(file) == "-":
        return typer.get_binary_stream("stdin").read(max_object_size + 1)
    try:
        with file.open("rb") as input_file:
            return input_file.read(max_object_size + 1)
    except FileNotFoundError as err:
        raise UsageError(f"input file not found: {str(file)!r}") from err
    except IsADirectoryError as err:
        raise UsageError(f"invalid input {str(file)!r}: is a directory") from err
    except OSError as err:
        raise UsageError(f"cannot read input file {str(file)!r}: {err}") from err


@app.command("add")
def add(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="File to add, or - to read standard input.")
    ],
    cid_version: Annotated[
        str,
        typer.Option(
            "--cid-version",
            metavar="0|1",
            help=(
                "CID version: 0 as Kubo's defaults (Qm...), 1 as "
                "`ipfs add --cid-version=1` (raw leaves, base32)."
            ),
        ),
    ] = "1",
    store: StoreOption = None,
) -> None:
    """Add FILE to the store, pin it and print its CID alone, as `ipfs add -Q`."""
    with _exit_on_error():
        if cid_version not in ("0", "1"):
            raise UsageError(f"invalid --cid-version {cid_version!r}: expected 0 or 1")
        with _open(ctx, store, int(cid_version)) as opened:
            data = _read_input(file, opened.max_object_size)
            cid = opened.put(data)
    typer.echo(cid)


@app.command("cat")
def cat(
    ctx: typer.Context,
    cid: Annotated[str, typer.Argument(help="CID of the object to read.")],
    store: StoreOption = None,
) -> None:
    """Write the bytes of CID to standard output, after checking they match it."""
    with _exit_on_error(), _open(ctx, store) as opened:
        data = opened.get(cid)
    stdout = typer.get_binary_stream("stdout")
    stdout.write(data)
    stdout.flush()
