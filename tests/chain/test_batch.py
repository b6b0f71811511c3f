"""Batched reads: same values as web3 calls, shared requests, failures by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from ztfm_chain.chain.batch import ReadBatch
from ztfm_chain.chain.deploy import System
from ztfm_chain.exceptions import ChainError, UsageError


def test_batch_matches_web3_calls(
    system: System,
    enrolled: Callable[..., LocalAccount],
    open_model: Callable[..., tuple[int, int]],
) -> None:
    devices = [enrolled().address for _ in range(3)]
    model_id, round_ = open_model()
    block = system.client.w3.eth.block_number
    batch = ReadBatch(system.client)
    records = [
        batch.call(system.devices, "deviceWithKey", [d], block=block) for d in devices
    ]
    many = batch.call(system.devices, "devicesOf", [devices], block=block)
    scores = batch.call(system.trust, "scoresOf", [devices])
    model = batch.call(system.models, "modelOf", [model_id], block=block)
    round_info = batch.call(system.models, "roundOf", [model_id, round_])
    header = batch.block(block)
    batch.execute()

    functions = system.devices.functions
    for device, read in zip(devices, records, strict=True):
        assert read.value == system.client.call(functions.deviceWithKey(device), block)
    assert many.value == system.client.call(functions.devicesOf(devices), block)
    assert scores.value == system.client.call(system.trust.functions.scoresOf(devices))
    assert model.value == system.client.call(
        system.models.functions.modelOf(model_id), block
    )
    assert round_info.value == system.client.call(
        system.models.functions.roundOf(model_id, round_)
    )
    assert int(header.value["number"], 16) == block


def test_batch_returns_checksum_addresses(
    system: System, enrolled: Callable[..., LocalAccount]
) -> None:
    device = enrolled().address
    batch = ReadBatch(system.client)
    key = batch.call(system.devices, "keyOf", [device])
    batch.execute()
    assert key.value == device


def test_batch_shares_repeated_requests(
    system: System, enrolled: Callable[..., LocalAccount]
) -> None:
    device = enrolled().address
    batch = ReadBatch(system.client)
    first = batch.call(system.trust, "scoreOf", [device], block=1)
    second = batch.call(system.trust, "scoreOf", [device], block=1)
    other_block = batch.call(system.trust, "scoreOf", [device])
    header = batch.block(1)
    assert batch.block(1) is header
    assert first is second
    assert other_block is not first
    assert len(batch) == 3


def test_batch_splits_into_posts(
    system: System, enrolled: Callable[..., LocalAccount]
) -> None:
    devices = [enrolled().address for _ in range(5)]
    batch = ReadBatch(system.client, limit=2)
    reads = [batch.call(system.trust, "scoreOf", [d]) for d in devices]
    headers = [batch.block(n) for n in range(3)]
    batch.execute()
    assert [r.value for r in reads] == [5000] * 5
    assert [int(h.value["number"], 16) for h in headers] == [0, 1, 2]


def test_batch_revert_names_the_call(system: System) -> None:
    batch = ReadBatch(system.client)
    batch.call(system.models, "modelOf", [999])
    with pytest.raises(ChainError, match=r"modelOf\(999\) at block 'latest' failed"):
        batch.execute()


def test_batch_missing_block_is_an_error(system: System) -> None:
    batch = ReadBatch(system.client)
    batch.block(10**9)
    with pytest.raises(ChainError, match="header of block 1000000000 was not found"):
        batch.execute()


@pytest.mark.parametrize(
    ("queue", "message"),
    [
        (lambda b, s: b.call(s.trust, "noSuchFunction", []), "names 0 functions"),
        (lambda b, s: b.call(s.trust, "scoreOf", []), "takes 1 arguments, got 0"),
        (lambda b, s: b.block(-1), "block number must be >= 0, got -1"),
        (
            lambda b, s: b.call(s.trust, "scoreOf", [s.trust.address], block=-5),
            "block number must be >= 0, got -5",
        ),
    ],
)
def test_batch_rejects_invalid_requests(
    system: System, queue: Callable[[ReadBatch, System], Any], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        queue(ReadBatch(system.client), system)


def test_batch_value_before_execute_is_an_error(system: System) -> None:
    batch = ReadBatch(system.client)
    read = batch.call(system.trust, "scoreOf", [system.trust.address])
    with pytest.raises(UsageError, match="before its batch was executed"):
        _ = read.value


def test_batch_runs_once(system: System) -> None:
    batch = ReadBatch(system.client)
    batch.block(0)
    batch.execute()
    with pytest.raises(UsageError, match="already executed"):
        batch.execute()
    with pytest.raises(UsageError, match="already executed"):
        batch.block(1)


def test_batch_limit_must_be_positive(system: System) -> None:
    with pytest.raises(UsageError, match="batch limit must be at least 1, got 0"):
        ReadBatch(system.client, limit=0)
