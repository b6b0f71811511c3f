"""Read contract events over block ranges, page by page."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

from eth_abi.abi import decode
from eth_abi.exceptions import DecodingError
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3.contract.contract import ContractEvent
from web3.exceptions import Web3RPCError
from web3.types import EventData

from ztfm_chain.chain.client import ChainClient
from ztfm_chain.exceptions import UsageError

log = logging.getLogger(__name__)

#: Blocks per ``eth_getLogs`` request; halved while the node rejects a window as too big.
DEFAULT_PAGE_SIZE = 5_000


def iter_events(
    client: ChainClient,
    event: type[ContractEvent] | ContractEvent,
    from_block: int,
    to_block: int,
    *,
    argument_filters: dict[str, Any] | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    lenient: bool = False,
) -> Iterator[EventData]:
    """Yield the decoded events of ``event`` in blocks ``from_block..to_block``.

    Both bounds are inclusive. Windows are consecutive and disjoint, so no block is
    read twice or skipped; events come in chain order (block, then log index).

    Solidity does not check that a ``string`` contains UTF-8, so anyone who can emit
    the event can make web3 fail to decode a whole window. With ``lenient``, such a
    log is decoded with invalid bytes replaced by U+FFFD and yielded with an
    ``undecodable`` entry that names the field, instead of raising.
    """
    if from_block < 0 or to_block < from_block - 1:
        raise UsageError(
            f"invalid block range {from_block}..{to_block}: expected "
            "0 <= from_block <= to_block + 1"
        )
    if page_size < 1:
        raise UsageError(f"page_size must be at least 1, got {page_size}")
    start = from_block
    size = page_size
    while start <= to_block:
        end = min(start + size - 1, to_block)
        try:
            logs = client.read(
                functools.partial(
                    event.get_logs,
                    from_block=start,
                    to_block=end,
                    argument_filters=argument_filters,
                )
            )
        except (UnicodeDecodeError, DecodingError) as exc:
            if not lenient:
                raise
            log.warning(
                "events.undecodable_log from=%s to=%s error=%r", start, end, exc
            )
            logs = _decode_window_leniently(
                client, event, start, end, argument_filters or {}
            )
        except Web3RPCError as exc:
            if size == 1:
                raise
            size = max(1, size // 2)
            log.info(
                "events.window_shrunk from=%s to=%s new_size=%s error=%s",
                start,
                end,
                size,
                exc,
            )
            continue
        yield from sorted(logs, key=lambda e: (e["blockNumber"], e["logIndex"]))
        start = end + 1


def _decode_window_leniently(
    client: ChainClient,
    event: type[ContractEvent] | ContractEvent,
    start: int,
    end: int,
    argument_filters: dict[str, Any],
) -> list[Any]:
    """Decode the window's logs one by one, the undecodable ones leniently."""
    raw_logs = client.read(
        lambda: client.w3.eth.get_logs(
            {
                "address": event.address,
                "fromBlock": start,
                "toBlock": end,
                "topics": [HexBytes(event_abi_to_log_topic(event.abi))],
            }
        )
    )
    decoded = []
    for raw in raw_logs:
        try:
            entry: Any = event.process_log(raw)
        except (UnicodeDecodeError, DecodingError):
            entry = _decode_leniently(event.abi, raw)
        if all(entry["args"].get(k) == v for k, v in argument_filters.items()):
            decoded.append(entry)
    return decoded


def _decode_leniently(abi: Any, raw: Any) -> dict[str, Any]:
    """Decode a log with every string read as bytes, then as UTF-8 with replacement."""
    inputs = abi["inputs"]
    indexed = [i for i in inputs if i.get("indexed")]
    plain = [i for i in inputs if not i.get("indexed")]
    args: dict[str, Any] = {}
    for param, topic in zip(indexed, raw["topics"][1:], strict=True):
        # Indexed dynamic values are stored as their hash, so only value types occur.
        (args[param["name"]],) = decode([param["type"]], bytes(topic))
    types = ["bytes" if p["type"] == "string" else p["type"] for p in plain]
    invalid = []
    for param, value in zip(plain, decode(types, bytes(raw["data"])), strict=True):
        if param["type"] == "string":
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                invalid.append(param["name"])
                value = value.decode("utf-8", errors="replace")
        args[param["name"]] = value
    for param in inputs:
        if param["type"] == "address":
            args[param["name"]] = to_checksum_address(args[param["name"]])
    return {
        "args": args,
        "event": abi["name"],
        "address": raw["address"],
        "blockHash": raw["blockHash"],
        "blockNumber": raw["blockNumber"],
        "logIndex": raw["logIndex"],
        "transactionHash": raw["transactionHash"],
        "transactionIndex": raw["transactionIndex"],
        "undecodable": ", ".join(f"{name} is not valid UTF-8" for name in invalid),
    }
