"""JSON-RPC connection and transactions signed with local keys.

:class:`ChainClient` wraps a web3 connection. It signs every transaction locally,
hands out nonces under a lock per sender (so threads may send at once), estimates gas
with a safety margin, waits for receipts with a timeout, and turns every revert into
a named exception from :mod:`ztfm_chain.chain.errors`.

Retries: reads are retried on connection errors. A transaction is signed once and only
that signed transaction is re-sent after a connection error, so a retry can never
create a second transaction.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexStr
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError
from web3.types import BlockIdentifier, Nonce, RPCEndpoint, TxParams, TxReceipt

from ztfm_chain.chain.artifacts import load_artifact
from ztfm_chain.chain.errors import decode_revert
from ztfm_chain.exceptions import (
    ChainError,
    ChainUnavailable,
    ConfigError,
    TransactionReverted,
    TransactionTimeout,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Multiplier applied to the node's gas estimate.
GAS_MARGIN = 1.2
_READ_RETRIES = 3
_CONNECTION_ERRORS = (requests.ConnectionError, requests.Timeout, ConnectionError)


class ChainClient:
    """A connection to one EVM JSON-RPC endpoint."""

    def __init__(
        self,
        url: str,
        *,
        request_timeout: float = 30.0,
        receipt_timeout: float = 60.0,
    ) -> None:
        parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if (
            parsed is None
            or parsed.scheme not in ("http", "https")
            or not parsed.netloc
        ):
            raise ConfigError(
                f"invalid JSON-RPC URL {url!r}: expected http://HOST:PORT or "
                "https://HOST/PATH"
            )
        self.url = url
        self.receipt_timeout = receipt_timeout
        # web3 sends eth_chainId before and after every call; the provider's cache
        # returns it instead (the chain id of an endpoint cannot change under it).
        self.w3 = Web3(
            Web3.HTTPProvider(
                url,
                request_kwargs={"timeout": request_timeout},
                cache_allowed_requests=True,
                cacheable_requests={RPCEndpoint("eth_chainId")},
            )
        )
        self._nonce_locks: dict[str, threading.Lock] = {}
        self._next_nonce: dict[str, int] = {}
        self._locks_guard = threading.Lock()
        try:
            self.chain_id = self.read(lambda: self.w3.eth.chain_id)
        except ChainUnavailable:
            raise ChainUnavailable(
                f"no JSON-RPC response from {url}; start a chain with "
                "`ztfm chain up` or check the URL"
            ) from None

    # ---------------------------------------------------------------------------
    # Reads
    # ---------------------------------------------------------------------------

    def read(self, call: Callable[[], T]) -> T:
        """Run a read call, retrying connection errors with backoff."""
        delay = 0.2
        for attempt in range(1, _READ_RETRIES + 1):
            try:
                return call()
            except _CONNECTION_ERRORS as exc:
                if attempt == _READ_RETRIES:
                    raise ChainUnavailable(
                        f"{self.url} did not respond after {attempt} attempts "
                        f"({type(exc).__name__})"
                    ) from None
                log.debug(
                    "chain.read_retry url=%s attempt=%s error=%s",
                    self.url,
                    attempt,
                    exc,
                )
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def call(self, fn: ContractFunction, block: BlockIdentifier = "latest") -> Any:
        """Call a view function; a revert raises its named exception."""
        try:
            return self.read(lambda: fn.call(block_identifier=block))
        except ContractLogicError as exc:
            raise _revert_error(exc) from None

    def contract(self, name: str, address: str) -> Contract:
        """Return a web3 contract object for a project contract at ``address``."""
        return self.w3.eth.contract(
            address=Web3.to_checksum_address(address), abi=load_artifact(name).abi
        )

    def genesis_hash(self) -> HexStr:
        """Return the hash of block 0, which identifies a chain instance."""
        block = self.read(lambda: self.w3.eth.get_block(0))
        return HexStr("0x" + bytes(block["hash"]).hex())

    def has_code(self, address: str) -> bool:
        """Tell whether a contract's code exists at ``address``."""
        checksum = Web3.to_checksum_address(address)
        return len(self.read(lambda: self.w3.eth.get_code(checksum))) > 0

    # ---------------------------------------------------------------------------
    # Transactions
    # ---------------------------------------------------------------------------

    def transact(
        self,
        fn: ContractFunction | ContractConstructor,
        sender: LocalAccount,
        *,
        gas: int | None = None,
        timeout: float | None = None,
    ) -> TxReceipt:
        """Sign ``fn`` with ``sender``'s key, send it and wait for its receipt.

        Gas is estimated unless given, which also surfaces a revert before anything is
        sent. Raises the named :class:`ContractError` on a revert,
        :class:`TransactionTimeout` when no receipt arrives in time.
        """
        params: TxParams = {"from": sender.address, "chainId": self.chain_id}
        if gas is None:
            try:
                estimate = self.read(lambda: fn.estimate_gas(params))
            except ContractLogicError as exc:
                raise _revert_error(exc) from None
            except Web3RPCError as exc:
                raise _rpc_error(exc) from None
            gas = int(estimate * GAS_MARGIN)
        params["gas"] = gas
        with self._nonce_lock(sender.address):
            params["nonce"] = Nonce(self._take_nonce(sender.address))
            tx: dict[str, Any] = dict(self.read(lambda: fn.build_transaction(params)))
            signed = sender.sign_transaction(tx)
            try:
                tx_hash = self._send_raw(signed.raw_transaction)
            except BaseException:
                # The nonce may or may not be used: read it from the node next time.
                self._next_nonce.pop(sender.address, None)
                raise
        return self.wait(tx_hash, timeout=timeout, replay=(fn, params))

    def wait(
        self,
        tx_hash: HexBytes,
        *,
        timeout: float | None = None,
        replay: tuple[ContractFunction | ContractConstructor, TxParams] | None = None,
    ) -> TxReceipt:
        """Wait for a receipt; a failed transaction raises its decoded revert."""
        limit = self.receipt_timeout if timeout is None else timeout
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=limit, poll_latency=0.05
            )
        except TimeExhausted:
            raise TransactionTimeout(
                f"no receipt for transaction 0x{bytes(tx_hash).hex()} within "
                f"{limit}s; it may still be mined, check it before re-sending"
            ) from None
        if receipt["status"] != 1:
            raise self._failure(receipt, replay)
        return receipt

    def _failure(
        self,
        receipt: TxReceipt,
        replay: tuple[ContractFunction | ContractConstructor, TxParams] | None,
    ) -> ChainError:
        """Recover the revert reason of a mined failed transaction by replaying it."""
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        if replay is not None and isinstance(replay[0], ContractFunction):
            fn, params = replay[0], replay[1]
            call_params: TxParams = {"from": params["from"], "gas": params["gas"]}
            try:
                fn.call(call_params, block_identifier=receipt["blockNumber"] - 1)
            except ContractLogicError as exc:
                error = _revert_error(exc)
                error.args = (f"{error.args[0]} (transaction {tx_hash})",)
                return error
            except Exception as exc:
                log.debug("chain.replay_failed tx=%s error=%s", tx_hash, exc)
        return TransactionReverted(
            f"transaction {tx_hash} reverted in block {receipt['blockNumber']} "
            f"after using {receipt['gasUsed']} gas"
        )

    def reset_nonces(self) -> None:
        """Forget cached nonces, after the chain was reverted to a snapshot."""
        with self._locks_guard:
            self._next_nonce.clear()

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        """Send a raw JSON-RPC request (such as ``evm_snapshot``); return its result."""
        response = self.read(
            lambda: self.w3.provider.make_request(method, params or [])  # type: ignore[arg-type]
        )
        if "error" in response:
            raise ChainError(f"{method} failed on {self.url}: {response['error']}")
        return response["result"]

    def _nonce_lock(self, address: ChecksumAddress) -> threading.Lock:
        with self._locks_guard:
            return self._nonce_locks.setdefault(address, threading.Lock())

    def _take_nonce(self, address: ChecksumAddress) -> int:
        # Caller holds the sender's lock.
        cached = self._next_nonce.get(address)
        if cached is None:
            cached = self.read(
                lambda: self.w3.eth.get_transaction_count(address, "pending")
            )
        self._next_nonce[address] = cached + 1
        return cached

    def _send_raw(self, raw: HexBytes) -> HexBytes:
        try:
            return self.read(lambda: self.w3.eth.send_raw_transaction(raw))
        except Web3RPCError as exc:
            raise _rpc_error(exc) from None


def _revert_error(exc: ContractLogicError) -> ChainError:
    data = exc.data
    if isinstance(data, dict):
        # Ganache 7 puts the revert data of eth_estimateGas under "result".
        data = data.get("data") or data.get("result")
    error = decode_revert(data)
    if isinstance(error, TransactionReverted) and exc.message and not data:
        return TransactionReverted(str(exc.message))
    return error


def _rpc_error(exc: Web3RPCError) -> ChainError:
    message = exc.rpc_response.get("error", {}) if exc.rpc_response else {}
    text = message.get("message") if isinstance(message, dict) else None
    return ChainError(f"the node rejected the transaction: {text or exc}")
