"""Many view calls and block headers in one JSON-RPC batch request.

Reading chain state one ``eth_call`` at a time through web3 costs about 4.5 ms per
read on a local Anvil, most of it Python-side validation, encoding and decoding
(see docs/benchmarks.md). :class:`ReadBatch` encodes each call's data with eth-abi
from the contract's ABI and sends every queued request in JSON-RPC batch posts. It
decodes the results as ``ContractFunction.call`` returns them. A single output is
its value, several outputs are a list, structs are tuples and addresses are in
checksum form.

Typical use::

    batch = ReadBatch(client)
    record = batch.call(system.devices, "deviceWithKey", [device], block=100)
    header = batch.block(101)
    batch.execute()
    status = record.value[0][0]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_abi.abi import decode, encode
from eth_utils.abi import function_abi_to_4byte_selector
from eth_utils.address import to_checksum_address
from web3.contract import Contract
from web3.types import BlockIdentifier

from ztfm_chain.chain.client import ChainClient
from ztfm_chain.exceptions import ChainError, UsageError

__all__ = ["BATCH_LIMIT", "Pending", "ReadBatch"]

#: Requests per JSON-RPC batch post; larger batches are split into several posts.
BATCH_LIMIT = 500

_UNSET = object()


@dataclass
class Pending:
    """The result of one queued request, set by :meth:`ReadBatch.execute`."""

    label: str
    _value: Any = field(default=_UNSET, repr=False)

    @property
    def value(self) -> Any:
        """The decoded result; raises UsageError before the batch has run."""
        if self._value is _UNSET:
            raise UsageError(f"{self.label} was read before its batch was executed")
        return self._value


@dataclass(frozen=True)
class _Function:
    selector: bytes
    input_types: tuple[str, ...]
    outputs: tuple[dict[str, Any], ...]


@dataclass
class _Request:
    method: str
    params: list[Any]
    pending: Pending
    function: _Function | None


class ReadBatch:
    """A queue of read requests that one :meth:`execute` sends in batch posts.

    A batch runs once. Each queued request returns a :class:`Pending` whose
    ``value`` is set when :meth:`execute` returns. A failed request, such as a
    reverted call, raises ChainError from :meth:`execute` with the request's label.
    """

    def __init__(self, client: ChainClient, *, limit: int = BATCH_LIMIT) -> None:
        if limit < 1:
            raise UsageError(f"batch limit must be at least 1, got {limit}")
        self.client = client
        self.limit = limit
        self._requests: list[_Request] = []
        self._blocks: dict[int, Pending] = {}
        self._functions: dict[tuple[str, str], _Function] = {}
        self._calls: dict[tuple[str, str, str, str], Pending] = {}
        self._executed = False

    def __len__(self) -> int:
        return len(self._requests)

    def call(
        self,
        contract: Contract,
        function: str,
        args: list[Any] | tuple[Any, ...],
        *,
        block: BlockIdentifier = "latest",
    ) -> Pending:
        """Queue ``contract.function(*args)`` as an ``eth_call`` at ``block``.

        Repeated calls with the same arguments at the same block share one request.
        """
        call_key = (contract.address, function, repr(args), repr(block))
        queued = self._calls.get(call_key)
        if queued is not None:
            return queued
        key = (contract.address, function)
        spec = self._functions.get(key)
        if spec is None:
            spec = self._functions[key] = _function(contract, function)
        if len(args) != len(spec.input_types):
            raise UsageError(
                f"{function} takes {len(spec.input_types)} arguments, got {len(args)}"
            )
        data = spec.selector + encode(list(spec.input_types), list(args))
        pending = Pending(
            f"{function}({', '.join(map(repr, args))}) at block {block!r}"
        )
        self._queue(
            "eth_call",
            [{"to": contract.address, "data": "0x" + data.hex()}, _block_tag(block)],
            pending,
            spec,
        )
        self._calls[call_key] = pending
        return pending

    def block(self, number: int) -> Pending:
        """Queue the header of block ``number``; its value is the raw JSON object.

        Repeated requests for one block share one request.
        """
        if number < 0:
            raise UsageError(f"block number must be >= 0, got {number}")
        pending = self._blocks.get(number)
        if pending is None:
            pending = Pending(f"header of block {number}")
            self._blocks[number] = pending
            self._queue("eth_getBlockByNumber", [hex(number), False], pending, None)
        return pending

    def execute(self) -> None:
        """Send every queued request and set each result."""
        if self._executed:
            raise UsageError("this batch was already executed; start a new one")
        self._executed = True
        for start in range(0, len(self._requests), self.limit):
            chunk = self._requests[start : start + self.limit]
            responses = self._post(chunk)
            for request, response in zip(chunk, responses, strict=True):
                request.pending._value = _result(request, response)

    def _queue(
        self,
        method: str,
        params: list[Any],
        pending: Pending,
        function: _Function | None,
    ) -> None:
        if self._executed:
            raise UsageError("this batch was already executed; start a new one")
        self._requests.append(_Request(method, params, pending, function))

    def _post(self, chunk: list[_Request]) -> list[Any]:
        provider = self.client.w3.provider
        try:
            responses = self.client.read(
                lambda: provider.make_batch_request(  # type: ignore[attr-defined]
                    [(r.method, r.params) for r in chunk]
                )
            )
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            # web3 sorts the responses by id and fails on entries that are no
            # JSON-RPC response objects.
            raise ChainError(
                f"{self.client.url} returned a malformed batch response: {exc!r:.300}"
            ) from None
        if not isinstance(responses, list):
            # A node that rejects the whole batch returns one error object.
            detail = responses.get("error") if isinstance(responses, dict) else None
            raise ChainError(
                f"{self.client.url} rejected a batch of {len(chunk)} requests: "
                f"{(detail or responses)!r:.300}"
            )
        if len(responses) != len(chunk):
            raise ChainError(
                f"{self.client.url} returned {len(responses)} responses to a batch "
                f"of {len(chunk)} requests"
            )
        # web3 numbers a batch's requests with consecutive integer ids and sorts the
        # responses by id, so anything else means a response cannot be matched.
        ids = [r.get("id") if isinstance(r, dict) else None for r in responses]
        first = ids[0]
        if not isinstance(first, int) or ids != list(range(first, first + len(ids))):
            raise ChainError(
                f"{self.client.url} returned batch responses whose ids do not match "
                f"the requests: {ids[:10]!r}"
            )
        return responses


def _result(request: _Request, response: Any) -> Any:
    if "error" in response:
        raise ChainError(f"{request.pending.label} failed: {response['error']!r:.300}")
    raw = response.get("result")
    if request.function is None:
        if raw is None:
            raise ChainError(f"{request.pending.label} was not found")
        if not isinstance(raw, dict) or not all(
            isinstance(raw.get(key), str) for key in ("number", "timestamp")
        ):
            raise ChainError(f"{request.pending.label} is not a block: {raw!r:.300}")
        if int(raw["number"], 16) != int(request.params[0], 16):
            raise ChainError(f"{request.pending.label} returned block {raw['number']}")
        return raw
    try:
        data = bytes.fromhex(str(raw).removeprefix("0x"))
    except ValueError:
        raise ChainError(
            f"{request.pending.label} returned {raw!r:.100}, which is not hex data"
        ) from None
    outputs = request.function.outputs
    try:
        values = decode([_abi_type(o) for o in outputs], data)
    except Exception as exc:
        raise ChainError(
            f"{request.pending.label} returned {len(data)} bytes that do not decode "
            f"as its outputs: {exc}"
        ) from None
    normalised = [_normalise(o, v) for o, v in zip(outputs, values, strict=True)]
    return normalised[0] if len(normalised) == 1 else normalised


def _block_tag(block: BlockIdentifier) -> str:
    if isinstance(block, int):
        if block < 0:
            raise UsageError(f"block number must be >= 0, got {block}")
        return hex(block)
    if isinstance(block, bytes):
        return "0x" + block.hex()
    return str(block)


def _function(contract: Contract, name: str) -> _Function:
    """Return the selector and types of the function ``name`` in the ABI."""
    matches = [
        entry
        for entry in contract.abi
        if entry.get("type") == "function" and entry.get("name") == name
    ]
    if len(matches) != 1:
        raise UsageError(
            f"{name!r} names {len(matches)} functions in the contract at "
            f"{contract.address}; expected exactly one"
        )
    abi: dict[str, Any] = dict(matches[0])
    return _Function(
        selector=function_abi_to_4byte_selector(abi),  # type: ignore[arg-type]
        input_types=tuple(_abi_type(i) for i in abi.get("inputs", [])),
        outputs=tuple(abi.get("outputs", [])),
    )


def _abi_type(param: dict[str, Any]) -> str:
    """Return the canonical type string, expanding tuples to their components."""
    kind = str(param["type"])
    if not kind.startswith("tuple"):
        return kind
    inner = ",".join(_abi_type(c) for c in param["components"])
    return f"({inner}){kind[len('tuple') :]}"


def _normalise(param: dict[str, Any], value: Any) -> Any:
    """Checksum addresses and turn arrays into lists, recursively, as web3 does."""
    kind = str(param["type"])
    if kind.endswith("]"):
        element = {**param, "type": kind[: kind.rindex("[")]}
        return [_normalise(element, item) for item in value]
    if kind == "address":
        return to_checksum_address(value)
    if kind == "tuple":
        return tuple(
            _normalise(c, v) for c, v in zip(param["components"], value, strict=True)
        )
    return value
