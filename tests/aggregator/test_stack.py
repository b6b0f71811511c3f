"""The round's update stack: one float32 row per update, compacted in place."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ztfm_chain.aggregator.journal import CommitmentRow
from ztfm_chain.aggregator.reasons import Reason
from ztfm_chain.aggregator.rounds import AnomalySettings, UpdateStack, compute_outcome
from ztfm_chain.aggregator.verify import VerifiedUpdate
from ztfm_chain.chain.models import AggregationRule
from ztfm_chain.exceptions import UsageError
from ztfm_chain.updates import ModelSchema

SCHEMA = ModelSchema({"w": ((2, 3), "F32"), "b": ((3,), "F32")})


def verified(index: int, tensors: dict[str, torch.Tensor]) -> VerifiedUpdate:
    device = f"0x{index:040x}"
    row = CommitmentRow(
        tx_hash=f"0x{index:064x}",
        log_index=0,
        block=10 + index,
        model_id=1,
        round=1,
        device=device,
        content_hash="0x" + "00" * 32,
        cid="bafy",
        sample_count=10 * (index + 1),
        base_model_hash="0x" + "00" * 32,
        nonce=0,
        signer=device,
        signature="0x",
        status="pending",
    )
    return VerifiedUpdate(row, tensors, 10 * (index + 1))


def update(index: int, scale: float = 1.0) -> VerifiedUpdate:
    tensors = {
        "w": torch.full((2, 3), float(index + 1)) * scale,
        "b": torch.arange(3, dtype=torch.float32) + index,
    }
    return verified(index, tensors)


def test_stack_rows_equal_flattened_updates() -> None:
    updates = [update(i) for i in range(3)]
    stack = UpdateStack.of(SCHEMA, updates)
    assert len(stack) == 3
    assert stack.matrix.dtype == torch.float32
    for row, item in zip(stack.matrix, updates, strict=True):
        assert torch.equal(row, SCHEMA.flatten(item.tensors))
    assert stack.devices == [u.row.device for u in updates]
    assert stack.sample_counts == [10, 20, 30]


def test_stack_keep_moves_rows_to_front() -> None:
    stack = UpdateStack.of(SCHEMA, [update(i) for i in range(4)])
    expected = stack.matrix[[1, 3]].clone()
    stack.keep([1, 3])
    assert len(stack) == 2
    assert torch.equal(stack.matrix, expected)
    assert stack.sample_counts == [20, 40]


@pytest.mark.parametrize("indices", [[2, 1], [1, 1], [4], [-1]])
def test_stack_keep_rejects_invalid_indices(indices: list[int]) -> None:
    stack = UpdateStack.of(SCHEMA, [update(i) for i in range(4)])
    with pytest.raises(UsageError, match="indices must be ascending"):
        stack.keep(indices)


def test_stack_rejects_update_beyond_capacity() -> None:
    stack = UpdateStack(SCHEMA, 1)
    stack.add(update(0))
    with pytest.raises(UsageError, match="allocated for 1 updates"):
        stack.add(update(1))


def test_stack_rejects_mismatched_tensors() -> None:
    stack = UpdateStack(SCHEMA, 1)
    wrong = verified(0, {"w": torch.zeros(3, 2), "b": torch.zeros(3)})
    with pytest.raises(UsageError, match="do not match the model schema"):
        stack.add(wrong)
    assert len(stack) == 0


def test_flatten_out_rejects_wrong_buffer() -> None:
    tensors = update(0).tensors
    with pytest.raises(UsageError, match="float32 vector of 9 elements"):
        SCHEMA.flatten(tensors, out=torch.empty(9, dtype=torch.float64))
    with pytest.raises(UsageError, match="float32 vector of 9 elements"):
        SCHEMA.flatten(tensors, out=torch.empty(8))


def test_outcome_same_for_stack_and_list() -> None:
    updates = [update(i) for i in range(5)] + [update(5, scale=-50.0)]
    base = {name: torch.zeros(spec.shape) for name, spec in SCHEMA.items()}
    reference = {"w": torch.full((2, 3), 2.0), "b": torch.full((3,), 2.0)}
    arguments = {
        "schema": SCHEMA,
        "base": base,
        "rejected": {},
        "rule_id": int(AggregationRule.FEDAVG),
        "quorum": 1,
        "reference_tensors": reference,
        "anomaly": AnomalySettings(),
    }
    from_list = compute_outcome(updates=updates, **arguments)  # type: ignore[arg-type]
    from_stack = compute_outcome(
        updates=UpdateStack.of(SCHEMA, updates),
        **arguments,  # type: ignore[arg-type]
    )
    assert from_list.new_model is not None
    assert from_list.new_model == from_stack.new_model
    assert from_list.verdicts == from_stack.verdicts
    assert updates[5].row.device not in from_list.accepted
    assert len(from_list.accepted) == 5


def outcome_of(
    updates: list[VerifiedUpdate],
    *,
    rule: AggregationRule = AggregationRule.FEDAVG,
    base_value: float = 0.0,
) -> Any:
    base = {name: torch.full(spec.shape, base_value) for name, spec in SCHEMA.items()}
    return compute_outcome(
        schema=SCHEMA,
        base=base,
        updates=updates,
        rejected={},
        rule_id=int(rule),
        quorum=1,
        reference_tensors=None,
        anomaly=AnomalySettings(),
    )


def zero_update(index: int) -> VerifiedUpdate:
    return verified(index, {"w": torch.zeros(2, 3), "b": torch.zeros(3)})


def test_zero_updates_flagged_before_median() -> None:
    # Two zero updates out of three would make the median reference zero.
    updates = [zero_update(0), zero_update(1), update(2)]
    outcome = outcome_of(updates)
    assert outcome.verdicts[updates[0].row.device][0] is Reason.ANOMALOUS
    assert "norm 0" in outcome.verdicts[updates[1].row.device][1]
    assert outcome.accepted == [updates[2].row.device]
    assert outcome.new_model is not None


def test_only_zero_updates_give_no_model() -> None:
    outcome = outcome_of([zero_update(0)])
    assert outcome.new_model is None
    assert outcome.accepted == []


def test_multi_krum_too_few_updates_fails_round() -> None:
    updates = [update(0), update(1)]
    outcome = outcome_of(updates, rule=AggregationRule.MULTI_KRUM)
    assert outcome.new_model is None
    reason, detail = outcome.verdicts[updates[0].row.device]
    assert reason is Reason.NOT_AGGREGATED
    assert "multi-krum" in detail


def test_overflowing_model_fails_round() -> None:
    big = float(torch.finfo(torch.float32).max)
    updates = [update(0, scale=big / 2), update(1, scale=big / 2)]
    outcome = outcome_of(updates, base_value=big)
    assert outcome.new_model is None
    assert {r for r, _ in outcome.verdicts.values()} == {Reason.NOT_AGGREGATED}
