"""What every command group shares: exit codes, error output and dev accounts."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ztfm_chain.chain.anvil import ANVIL_MNEMONIC
from ztfm_chain.exceptions import ChainError, StorageError, UsageError, ZtfmError

P = ParamSpec("P")
R = TypeVar("R")

#: Exit codes of every ``ztfm`` command.
EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected error
EXIT_USAGE = 2  # a bad argument, setting, file or keystore
EXIT_STORAGE = 3  # the content store failed
EXIT_CHAIN = 4  # the chain failed or is not the expected one


def dev_account(index: int) -> LocalAccount:
    """Return funded Anvil development account ``index`` (well-known keys, local only)."""
    Account.enable_unaudited_hdwallet_features()
    account: LocalAccount = Account.from_mnemonic(
        ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}"
    )
    return account


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn package errors into one line on stderr and a documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if _debug_enabled():
            return func(*args, **kwargs)
        try:
            return func(*args, **kwargs)
        except UsageError as exc:
            _fail(exc, EXIT_USAGE)
        except StorageError as exc:
            _fail(exc, EXIT_STORAGE)
        except ChainError as exc:
            _fail(exc, EXIT_CHAIN)
        except ZtfmError as exc:
            _fail(exc, EXIT_FAILURE)

    return wrapper


def settings(ctx: typer.Context) -> Any:
    """Return the resolved :class:`~ztfm_chain.cli.settings.Settings` of the command."""
    root = ctx.find_root()
    return root.obj


_debug = False


def set_debug(enabled: bool) -> None:
    """Let errors propagate with their traceback (the global ``--debug`` option)."""
    global _debug
    _debug = enabled


def _debug_enabled() -> bool:
    return _debug


def _fail(exc: Exception, code: int) -> NoReturn:
    print(f"error: {exc}", file=sys.stderr)
    raise typer.Exit(code=code)
