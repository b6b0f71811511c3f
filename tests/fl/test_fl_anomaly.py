"""Anomaly scores and flags, on hand cases and on real digits updates."""

from __future__ import annotations

import math

import pytest
import torch

from ztfm_chain.exceptions import UsageError
from ztfm_chain.fl.anomaly import AnomalyScores, flag_anomalies, score_updates
from ztfm_chain.fl.attacks import scale_update, sign_flip
from ztfm_chain.fl.data import dirichlet_split, load_digits_split
from ztfm_chain.fl.models import DIGITS_WIDTHS, init_mlp_state
from ztfm_chain.fl.training import train_local_many
from ztfm_chain.updates import ModelSchema


def test_scores_against_reference() -> None:
    reference = torch.tensor([3.0, 4.0])
    updates = torch.tensor(
        [[3.0, 4.0], [-3.0, -4.0], [30.0, 40.0], [4.0, -3.0], [0.0, 0.0]]
    )

    scores = score_updates(updates, reference)

    assert scores.reference_norm == 5.0
    assert scores.cosine.tolist() == pytest.approx([1.0, -1.0, 1.0, 0.0, 0.0])
    assert scores.norm_ratio.tolist() == pytest.approx([1.0, 1.0, 10.0, 1.0, 0.0])
    assert scores.l2_distance.tolist() == pytest.approx(
        [0.0, 10.0, 45.0, math.sqrt(50), 5.0]
    )


def test_flags_name_each_broken_threshold() -> None:
    reference = torch.tensor([1.0, 0.0])
    updates = torch.tensor(
        [[1.0, 0.1], [-1.0, 0.0], [10.0, 0.0], [-10.0, 0.0], [0.01, 0.0]]
    )

    flags = flag_anomalies(
        score_updates(updates, reference), max_norm_ratio=5.0, min_norm_ratio=0.1
    )

    assert [(flag.index, flag.reasons) for flag in flags] == [
        (1, ("LOW_COSINE",)),
        (2, ("HIGH_NORM_RATIO",)),
        (3, ("LOW_COSINE", "HIGH_NORM_RATIO")),
        (4, ("LOW_NORM_RATIO",)),
    ]


def test_distance_threshold_is_optional() -> None:
    reference = torch.tensor([1.0, 0.0])
    updates = torch.tensor([[1.0, 0.9]])
    scores = score_updates(updates, reference)

    assert flag_anomalies(scores) == ()
    assert flag_anomalies(scores, max_distance_ratio=0.5)[0].reasons == (
        "HIGH_DISTANCE",
    )


def test_cosine_threshold_is_inclusive() -> None:
    scores = AnomalyScores(
        l2_distance=torch.tensor([1.0, 1.0], dtype=torch.float64),
        cosine=torch.tensor([0.2, 0.2001], dtype=torch.float64),
        norm_ratio=torch.tensor([1.0, 1.0], dtype=torch.float64),
        reference_norm=1.0,
    )

    assert [flag.index for flag in flag_anomalies(scores, min_cosine=0.2)] == [0]


@pytest.mark.parametrize(
    ("updates", "reference"),
    [
        pytest.param(torch.ones(2, 3), torch.zeros(3), id="zero-reference"),
        pytest.param(torch.ones(2, 3), torch.ones(2), id="length-mismatch"),
        pytest.param(torch.tensor([[float("inf"), 0.0]]), torch.ones(2), id="infinite"),
    ],
)
def test_score_updates_rejects_invalid_input(
    updates: torch.Tensor, reference: torch.Tensor
) -> None:
    with pytest.raises(UsageError):
        score_updates(updates, reference)


@pytest.mark.parametrize(
    "thresholds",
    [
        pytest.param({"min_cosine": 1.0}, id="cosine-one"),
        pytest.param({"max_norm_ratio": 0.0}, id="zero-max-ratio"),
        pytest.param({"min_norm_ratio": 6.0}, id="min-above-max"),
        pytest.param({"max_distance_ratio": 0.0}, id="zero-distance"),
    ],
)
def test_flag_anomalies_rejects_invalid_thresholds(
    thresholds: dict[str, float],
) -> None:
    scores = score_updates(torch.ones(1, 2), torch.ones(2))

    with pytest.raises(UsageError):
        flag_anomalies(scores, **thresholds)


@pytest.fixture(scope="module")
def digits_round() -> tuple[torch.Tensor, torch.Tensor]:
    """First-round updates of 20 non-IID devices and the root-set update."""
    split = load_digits_split(seed=0)
    parts = dirichlet_split(split.pool_y, 20, 0.5, seed=3)
    state = init_mlp_state(DIGITS_WIDTHS, seed=3)
    schema = ModelSchema.from_state_dict(state)
    datasets = [(split.pool_x[p], split.pool_y[p]) for p in parts]
    datasets.append((split.root_x, split.root_y))
    results = train_local_many(state, datasets, seeds=list(range(21)))
    vectors = torch.stack([schema.flatten(result.delta) for result in results])
    return vectors[:20], vectors[20]


def test_honest_digits_updates_are_not_flagged(
    digits_round: tuple[torch.Tensor, torch.Tensor],
) -> None:
    honest, root = digits_round

    assert flag_anomalies(score_updates(honest, root)) == ()


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        pytest.param(
            lambda u: scale_update(u, 10.0), "HIGH_NORM_RATIO", id="scaling-x10"
        ),
        pytest.param(sign_flip, "LOW_COSINE", id="sign-flip"),
        pytest.param(lambda u: sign_flip(u, 5.0), "LOW_COSINE", id="sign-flip-x5"),
    ],
)
def test_attacked_digits_updates_are_flagged(
    digits_round: tuple[torch.Tensor, torch.Tensor],
    attack: object,
    reason: str,
) -> None:
    honest, root = digits_round
    attackers = [2, 7, 11, 19]
    updates = honest.clone()
    for row in attackers:
        updates[row] = attack(honest[row])  # type: ignore[operator]

    flags = flag_anomalies(score_updates(updates, root))

    assert [flag.index for flag in flags] == attackers
    assert all(reason in flag.reasons for flag in flags)
