"""compute_outcome's root-set loss check, on real digits updates and no chain."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ztfm_chain.aggregator.journal import CommitmentRow
from ztfm_chain.aggregator.reasons import Reason
from ztfm_chain.aggregator.rounds import (
    AnomalySettings,
    RootData,
    RoundOutcome,
    compute_outcome,
    next_trust,
    root_reference,
)
from ztfm_chain.aggregator.verify import VerifiedUpdate
from ztfm_chain.chain.models import AggregationRule as RuleId
from ztfm_chain.fl.attacks import flip_labels
from ztfm_chain.fl.data import DigitsSplit, dirichlet_split
from ztfm_chain.fl.models import DIGITS_WIDTHS, init_mlp_state
from ztfm_chain.fl.training import train_local_many
from ztfm_chain.fl.trust import TrustPolicy
from ztfm_chain.updates import ModelSchema

N_HONEST = 10
FLIPPER = f"0x{N_HONEST + 1:040x}"


@dataclasses.dataclass(frozen=True)
class Round:
    schema: ModelSchema
    base: dict[str, torch.Tensor]
    updates: list[VerifiedUpdate]
    root: RootData


def _row(device: str, sample_count: int) -> CommitmentRow:
    return CommitmentRow(
        tx_hash="0x" + "00" * 32,
        log_index=0,
        block=1,
        model_id=1,
        round=2,
        device=device,
        content_hash="0x" + "00" * 32,
        cid="cid",
        sample_count=sample_count,
        base_model_hash="0x" + "00" * 32,
        nonce=0,
        signer=device,
        signature="0x",
        status="pending",
    )


@pytest.fixture(scope="module")
def second_round(digits: DigitsSplit) -> Round:
    """Round 2 of 10 honest non-IID devices plus one that flips device 0's labels."""
    parts = dirichlet_split(digits.pool_y, N_HONEST, 0.5, seed=0)
    honest = [(digits.pool_x[p], digits.pool_y[p]) for p in parts]
    base = init_mlp_state(DIGITS_WIDTHS, seed=0)
    schema = ModelSchema.from_state_dict(base)
    first = train_local_many(base, honest, seeds=list(range(N_HONEST)))
    mean = torch.stack([schema.flatten(r.delta) for r in first]).double().mean(0)
    base = schema.unflatten(schema.flatten(base).double() + mean)
    flipped = (digits.pool_x[parts[0]], flip_labels(digits.pool_y[parts[0]]))
    datasets = [*honest, flipped]
    results = train_local_many(base, datasets, seeds=list(range(len(datasets))))
    updates = [
        VerifiedUpdate(
            _row(f"0x{index + 1:040x}", len(labels)), result.delta, len(labels)
        )
        for index, ((_, labels), result) in enumerate(
            zip(datasets, results, strict=True)
        )
    ]
    return Round(schema, base, updates, RootData(digits.root_x, digits.root_y))


def _outcome(
    round: Round, *, root: RootData | None, anomaly: AnomalySettings | None = None
) -> RoundOutcome:
    return compute_outcome(
        schema=round.schema,
        base=round.base,
        updates=round.updates,
        rejected={},
        rule_id=int(RuleId.FEDAVG),
        quorum=1,
        reference_tensors=root_reference(round.base, round.root),
        anomaly=anomaly or AnomalySettings(root_loss=True),
        root=root,
    )


def test_root_loss_flags_label_flipper(second_round: Round) -> None:
    outcome = _outcome(second_round, root=second_round.root)

    reason, detail = outcome.verdicts[FLIPPER]
    assert reason is Reason.ANOMALOUS
    assert "root-set loss change " in detail
    assert outcome.scores[FLIPPER]["cosine"] > 0
    assert len(outcome.accepted) == N_HONEST
    assert FLIPPER not in outcome.accepted
    assert outcome.new_model is not None


def test_honest_non_iid_updates_accepted(second_round: Round) -> None:
    outcome = _outcome(second_round, root=second_round.root)

    for update in second_round.updates[:N_HONEST]:
        device = update.row.device
        assert outcome.verdicts[device] == (Reason.ACCEPTED, ""), device
        assert "root_loss_change" in outcome.scores[device]


def test_without_root_set_flipper_passes(second_round: Round) -> None:
    outcome = _outcome(second_round, root=None)

    assert outcome.verdicts[FLIPPER] == (Reason.ACCEPTED, "")
    assert "root_loss_change" not in outcome.scores[FLIPPER]


def test_root_loss_can_be_disabled(second_round: Round) -> None:
    settings = AnomalySettings(root_loss=False)

    outcome = _outcome(second_round, root=second_round.root, anomaly=settings)

    assert outcome.verdicts[FLIPPER] == (Reason.ACCEPTED, "")


def test_flagged_flipper_loses_trust(second_round: Round) -> None:
    outcome = _outcome(second_round, root=second_round.root)
    current = {device: 5000 for device in outcome.verdicts}

    changes = next_trust(outcome, current, TrustPolicy())

    assert changes[FLIPPER] == (5000, 3000, Reason.ANOMALOUS)
    honest = second_round.updates[0].row.device
    assert changes[honest][1] >= 5000


def test_outcome_is_reproducible(second_round: Round) -> None:
    first = _outcome(second_round, root=second_round.root)
    second = _outcome(second_round, root=second_round.root)

    assert first.verdicts == second.verdicts
    assert first.scores == second.scores
    assert first.new_model == second.new_model
