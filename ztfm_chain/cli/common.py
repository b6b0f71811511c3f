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
from ztfm_chain.exceptions import (
    ChainError,
    ContractError,
    StorageError,
    UsageError,
    ZtfmError,
)

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
    # A revert may come wrapped, as the cause of a failed device step.
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ContractError):
        cause = cause.__cause__
    hint = revert_hint(cause) if isinstance(cause, ContractError) else None
    message = f"{exc}; {hint}" if hint else str(exc)
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code=code)


def revert_hint(exc: ContractError) -> str | None:
    """Return what to do about a revert that a user's request commonly causes."""
    arguments = exc.arguments
    name = exc.error_name
    if name == "CredentialExpired":
        if arguments.get("expiresAt") == 0:
            return (
                "the contract rejected it because the device has no attested "
                "credential: run `ztfm device attest DEVICE --measurement HASH`"
            )
        return "the device's credential expired: attest the device again"
    if name == "DeviceNotActive":
        if arguments.get("status") == 0:
            return "the device is not enrolled: run `ztfm device enrol DEVICE`"
        return "the device is suspended or revoked (`ztfm device show DEVICE`)"
    if name == "TrustTooLow":
        return (
            "the device's trust is below the model's minimum, so it cannot commit "
            "until an aggregator of the model raises it with `ztfm trust set`"
        )
    if name == "AlreadyCommitted":
        return "the device already committed in this round: wait for the next one"
    if name == "NotModelAggregator":
        return "the key is not an aggregator of this model"
    return None
