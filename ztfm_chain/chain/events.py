"""Read contract events over block ranges, page by page."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

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
) -> Iterator[EventData]:
    """Yield the decoded events of ``event`` in blocks ``from_block..to_block``.

    Both bounds are inclusive. Windows are consecutive and disjoint, so no block is
    read twice or skipped; events come in chain order (block, then log index).
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
