"""Rules and scores read updates in column blocks; results match whole-matrix maths."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ztfm_chain.exceptions import UsageError
from ztfm_chain.fl import aggregation
from ztfm_chain.fl.aggregation import (
    CoordinateMedian,
    FedAvg,
    FLTrust,
    MultiKrum,
    TrimmedMean,
    column_blocks,
    krum_scores,
)
from ztfm_chain.fl.anomaly import score_updates

N_UPDATES = 9
DIMENSION = 5_000


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force blocks of 1,024 columns, so a 5,000-column matrix takes five blocks."""
    monkeypatch.setattr(aggregation, "BLOCK_BYTES", 1)


@pytest.fixture
def updates() -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    matrix = torch.randn(N_UPDATES, DIMENSION, generator=generator)
    matrix[0] *= 40.0  # one long outlier
    matrix[1] = -matrix[2]  # one opposed pair
    return matrix


@pytest.fixture
def reference(updates: torch.Tensor) -> torch.Tensor:
    return updates[2:].to(torch.float64).mean(dim=0)


def test_column_blocks_cover_every_column_once() -> None:
    blocks = list(column_blocks(300, 1_000_000))
    assert blocks[0].start == 0
    assert blocks[-1].stop == 1_000_000
    for previous, current in itertools.pairwise(blocks):
        assert previous.stop == current.start
    assert len(blocks) == math.ceil(1_000_000 / (aggregation.BLOCK_BYTES // (8 * 300)))


def test_column_blocks_have_a_minimum_width(small_blocks: None) -> None:
    assert [b.stop - b.start for b in column_blocks(10, 2_500)] == [1024, 1024, 452]


def test_fedavg_blocks_match_whole_matrix(
    small_blocks: None, updates: torch.Tensor
) -> None:
    counts = torch.arange(1, N_UPDATES + 1, dtype=torch.float64)
    whole = updates.to(torch.float64)
    expected = (counts.unsqueeze(1) * whole).sum(dim=0) / counts.sum()
    result = FedAvg().aggregate(updates, counts)
    assert torch.allclose(result.vector.to(torch.float64), expected, rtol=1e-6)
    assert result.vector.dtype == torch.float32


@pytest.mark.parametrize("rule", [TrimmedMean(beta=0.2), CoordinateMedian()])
def test_order_statistic_blocks_match_whole_matrix(
    small_blocks: None, updates: torch.Tensor, rule: TrimmedMean | CoordinateMedian
) -> None:
    ordered = torch.sort(updates.to(torch.float64), dim=0).values
    if isinstance(rule, TrimmedMean):
        trim = math.floor(0.2 * N_UPDATES)
        expected = ordered[trim : N_UPDATES - trim].mean(dim=0)
    else:
        expected = ordered[N_UPDATES // 2]
    result = rule.aggregate(updates, torch.ones(N_UPDATES))
    assert torch.allclose(result.vector.to(torch.float64), expected, rtol=1e-6)
    # Each column averages the same number of values, so the shares add up to it.
    kept = N_UPDATES - 2 * trim if isinstance(rule, TrimmedMean) else 1
    assert float(result.weights.sum()) == pytest.approx(kept)


def test_krum_blocks_match_whole_matrix(
    small_blocks: None, updates: torch.Tensor
) -> None:
    whole = updates.to(torch.float64)
    distances = torch.cdist(whole, whole).square()
    distances.fill_diagonal_(math.inf)
    expected = torch.topk(distances, N_UPDATES - 2 - 2, largest=False).values.sum(1)
    assert torch.allclose(krum_scores(updates, 2), expected, rtol=1e-9)
    result = MultiKrum(n_byzantine=2).aggregate(updates, torch.ones(N_UPDATES))
    assert 0 in {e.index for e in result.excluded}


def test_fltrust_blocks_match_whole_matrix(
    small_blocks: None, updates: torch.Tensor, reference: torch.Tensor
) -> None:
    whole = updates.to(torch.float64)
    norms = whole.norm(dim=1)
    cosines = (whole @ reference) / (norms * reference.norm())
    scores = cosines.clamp(min=0)
    scaled = (scores * reference.norm() / norms).unsqueeze(1) * whole
    expected = scaled.sum(dim=0) / scores.sum()
    result = FLTrust().aggregate(updates, torch.ones(N_UPDATES), reference)
    assert torch.allclose(result.vector.to(torch.float64), expected, rtol=1e-5)
    assert torch.allclose(result.weights, scores / scores.sum(), rtol=1e-9)


def test_score_blocks_match_whole_matrix(
    small_blocks: None, updates: torch.Tensor, reference: torch.Tensor
) -> None:
    whole = updates.to(torch.float64)
    scores = score_updates(updates, reference)
    norms = whole.norm(dim=1)
    assert torch.allclose(scores.norm_ratio, norms / reference.norm(), rtol=1e-12)
    assert torch.allclose(
        scores.cosine, (whole @ reference) / (norms * reference.norm()), rtol=1e-9
    )
    assert torch.allclose(
        scores.l2_distance, (whole - reference).norm(dim=1), rtol=1e-12
    )


def test_non_finite_in_late_block(
    small_blocks: None, updates: torch.Tensor, reference: torch.Tensor
) -> None:
    updates[4, DIMENSION - 1] = float("nan")
    with pytest.raises(UsageError, match=r"rows \[4\]"):
        FedAvg().aggregate(updates, torch.ones(N_UPDATES))
    with pytest.raises(UsageError, match="must be finite"):
        score_updates(updates, reference)
