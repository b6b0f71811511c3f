"""A node that responds wrongly to JSON-RPC batches, behind a proxy in front of Anvil.

Each test reads chain state through ReadBatch or the provenance checks while the
proxy rewrites the node's batch responses. A wrong response must raise ChainError
and never be assigned to another request.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from tests.chain.conftest import enrolled, model  # noqa: F401
from tests.hostile.rpc_proxy import RpcProxy, rpc_proxy
from ztfm_chain.aggregator.journal import CommitmentRow
from ztfm_chain.aggregator.verify import check_current_status_many
from ztfm_chain.chain.batch import ReadBatch
from ztfm_chain.chain.client import ChainClient
from ztfm_chain.chain.deploy import System
from ztfm_chain.chain.models import model_info
from ztfm_chain.exceptions import ChainError


@pytest.fixture
def proxy(system: System) -> Iterator[RpcProxy]:
    with rpc_proxy(system.client.url) as running:
        yield running


def proxied(system: System, proxy: RpcProxy, **options: Any) -> System:
    return System(ChainClient(proxy.url, **options), system.deployment)


def segment_reads(system: System, model_id: int) -> tuple[ReadBatch, list[Any]]:
    """Queue isSegmentAllowed for segments 1 to 4, of which only 1 is allowed."""
    batch = ReadBatch(system.client)
    reads = [
        batch.call(system.models, "isSegmentAllowed", [model_id, segment])
        for segment in (1, 2, 3, 4)
    ]
    return batch, reads


def strip_ids_and_reverse(requests: list[Any], responses: list[Any]) -> Any:
    return [{k: v for k, v in r.items() if k != "id"} for r in reversed(responses)]


def repeat_first_id(requests: list[Any], responses: list[Any]) -> Any:
    # Every response carries the id and result of the first request.
    return [dict(responses[0]) for _ in responses]


def ids_as_strings(requests: list[Any], responses: list[Any]) -> Any:
    # Sent in the node's order, which is request order.
    return [{**r, "id": str(r["id"])} for r in responses]


REORDERINGS: dict[str, Callable[[list[Any], list[Any]], Any]] = {
    "ids-missing-reversed": strip_ids_and_reverse,
    "first-id-repeated": repeat_first_id,
}


@pytest.mark.parametrize("name", list(REORDERINGS))
def test_batch_rejects_unmatched_response_ids(
    system: System,
    model: Callable[..., int],  # noqa: F811
    proxy: RpcProxy,
    name: str,
) -> None:
    model_id = model(segments=[1])
    through_proxy = proxied(system, proxy)
    batch, reads = segment_reads(through_proxy, model_id)
    proxy.rewrite = REORDERINGS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ChainError):
            batch.execute()
    values = [read._value for read in reads]
    assert values != [False, False, False, True], "responses were reassigned"


def test_batch_string_ids_keep_request_order(
    system: System,
    model: Callable[..., int],  # noqa: F811
    proxy: RpcProxy,
) -> None:
    """A node that echoes ids as strings: web3 sorts "10" before "9"."""
    model_id = model(segments=[1])
    through_proxy = proxied(system, proxy)
    provider = through_proxy.client.w3.provider
    # Put the batch's ids across 9 -> 10 so that text order differs from numbers.
    provider.request_counter = itertools.count(7)  # type: ignore[attr-defined]
    batch, reads = segment_reads(through_proxy, model_id)
    proxy.rewrite = ids_as_strings
    try:
        batch.execute()
    except ChainError:
        return
    assert [read.value for read in reads] == [True, False, False, False]


NON_LIST_BODIES: dict[str, bytes] = {
    "json-string": b'"batch rejected"',
    "json-number": b"42",
    "json-null": b"null",
}


@pytest.mark.parametrize("name", list(NON_LIST_BODIES))
def test_batch_non_list_body_is_chain_error(
    system: System,
    model: Callable[..., int],  # noqa: F811
    proxy: RpcProxy,
    name: str,
) -> None:
    model_id = model(segments=[1])
    batch, _ = segment_reads(proxied(system, proxy), model_id)
    proxy.rewrite = lambda requests, responses: NON_LIST_BODIES[name]
    with pytest.raises(ChainError):
        batch.execute()


def first_result(value: Any) -> Callable[[list[Any], list[Any]], Any]:
    def rewrite(requests: list[Any], responses: list[Any]) -> Any:
        return [{**responses[0], "result": value}, *responses[1:]]

    return rewrite


BAD_ENTRIES: dict[str, Callable[[list[Any], list[Any]], Any]] = {
    "result-not-hex": first_result("0xzz"),
    "result-odd-hex": first_result("0x123"),
    "result-null": first_result(None),
    "result-object": first_result({"a": 1}),
    "entry-null": lambda requests, responses: [None, *responses[1:]],
    "entry-list": lambda requests, responses: [[], *responses[1:]],
    "error-is-string": lambda requests, responses: [
        {"jsonrpc": "2.0", "id": responses[0]["id"], "error": "boom"},
        *responses[1:],
    ],
}


@pytest.mark.parametrize("name", list(BAD_ENTRIES))
def test_batch_bad_entry_is_chain_error(
    system: System,
    model: Callable[..., int],  # noqa: F811
    proxy: RpcProxy,
    name: str,
) -> None:
    model_id = model(segments=[1])
    batch, _ = segment_reads(proxied(system, proxy), model_id)
    proxy.rewrite = BAD_ENTRIES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ChainError):
            batch.execute()


def test_status_check_swapped_segments(
    system: System,
    model: Callable[..., int],  # noqa: F811
    enrolled: Callable[..., LocalAccount],  # noqa: F811
    proxy: RpcProxy,
) -> None:
    """Check two devices, one outside the model's segments, while the node swaps two results.

    The second batch reads isSegmentAllowed for both segments. The proxy strips
    its ids and reverses it, so the allowed segment's result goes to the other.
    """
    model_id = model(segments=[1])
    allowed = enrolled(segment=1).address
    outside = enrolled(segment=2).address
    through_proxy = proxied(system, proxy)
    info = model_info(through_proxy, model_id)
    rows = [_row(allowed, model_id), _row(outside, model_id)]
    calls = []

    def rewrite(requests: list[Any], responses: list[Any]) -> Any:
        calls.append(len(requests))
        # The second batch reads the two segments; strip its ids and swap them.
        if len(calls) == 2:
            return strip_ids_and_reverse(requests, responses)
        return responses

    proxy.rewrite = rewrite
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            verdicts = check_current_status_many(through_proxy, info, rows)
        except ChainError:
            return
    assert not verdicts[1].ok, "a device outside the model's segments passed"


def _row(device: str, model_id: int) -> CommitmentRow:
    return CommitmentRow(
        tx_hash="0x" + "00" * 32,
        log_index=0,
        block=1,
        model_id=model_id,
        round=1,
        device=device,
        content_hash="0x" + "00" * 32,
        cid="",
        sample_count=1,
        base_model_hash="0x" + "00" * 32,
        nonce=0,
        signer=device,
        signature="0x",
        status="pending",
    )
