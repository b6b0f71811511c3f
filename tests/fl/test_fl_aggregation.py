"""Aggregation rules on small cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ztfm_chain.exceptions import UsageError
from ztfm_chain.fl.aggregation import (
    RULES,
    AggregationRule,
    CoordinateMedian,
    FedAvg,
    FLTrust,
    MultiKrum,
    TrimmedMean,
    krum_scores,
    make_rule,
)


def rows(*values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def ones(n: int) -> torch.Tensor:
    return torch.ones(n)


def excluded_indices(
    rule: AggregationRule, updates: torch.Tensor, **kw: object
) -> list[int]:
    result = rule.aggregate(updates, ones(len(updates)), **kw)  # type: ignore[arg-type]
    return [exclusion.index for exclusion in result.excluded]


# --- FedAvg ----------------------------------------------------------------------


def test_fedavg_weights_by_sample_count() -> None:
    updates = rows([1, 2], [3, 4], [10, 20])

    result = FedAvg().aggregate(updates, torch.tensor([1.0, 1.0, 2.0]))

    # ((1 + 3 + 2*10) / 4, (2 + 4 + 2*20) / 4)
    assert torch.allclose(result.vector, torch.tensor([6.0, 11.5]))
    assert result.weights.tolist() == [0.25, 0.25, 0.5]
    assert result.excluded == ()


def test_fedavg_equal_counts_is_plain_mean() -> None:
    updates = rows([1, 2], [3, 4], [10, 20])

    result = FedAvg().aggregate(updates, ones(3))

    assert torch.allclose(result.vector, updates.mean(dim=0))


def test_fedavg_excludes_zero_weight() -> None:
    updates = rows([1.0], [100.0])

    result = FedAvg().aggregate(updates, torch.tensor([3.0, 0.0]))

    assert result.vector.tolist() == [1.0]
    assert [(e.index, e.reason) for e in result.excluded] == [(1, "ZERO_WEIGHT")]
    assert result.selected == (0,)


def test_fedavg_taken_over_by_outlier() -> None:
    honest = rows([1.0], [1.0], [1.0], [1.0])
    attacked = torch.cat([honest, rows([-100.0])])

    result = FedAvg().aggregate(attacked, ones(5))

    assert float(result.vector[0]) < 0


# --- trimmed mean ----------------------------------------------------------------


def test_trimmed_mean_drops_extremes_per_coordinate() -> None:
    updates = rows([1, 5], [2, -100], [3, 6], [4, 7], [100, 8])

    result = TrimmedMean(beta=0.2).aggregate(updates, ones(5))

    # floor(0.2 * 5) = 1 from each end: mean(2, 3, 4) and mean(5, 6, 7).
    assert torch.allclose(result.vector, torch.tensor([3.0, 6.0]))
    # Update 4 (100, 8) is trimmed in both coordinates; update 0 is kept in one.
    assert result.weights.tolist() == [0.5, 0.5, 1.0, 1.0, 0.0]
    assert [(e.index, e.reason) for e in result.excluded] == [(4, "TRIMMED")]


def test_trimmed_mean_without_trim_is_mean() -> None:
    updates = rows([1, 5], [2, -100], [3, 6])

    result = TrimmedMean(beta=0.0).aggregate(updates, ones(3))

    assert torch.allclose(result.vector, updates.mean(dim=0))


def test_trimmed_mean_trim_rounds_down() -> None:
    updates = rows([0.0], [1.0], [2.0], [30.0])

    # floor(0.2 * 4) = 0, so nothing is trimmed.
    result = TrimmedMean(beta=0.2).aggregate(updates, ones(4))

    assert result.vector.tolist() == [8.25]


@pytest.mark.parametrize(
    "beta", [pytest.param(0.5, id="half"), pytest.param(-0.1, id="negative")]
)
def test_trimmed_mean_rejects_invalid_beta(beta: float) -> None:
    with pytest.raises(UsageError, match="beta"):
        TrimmedMean(beta=beta)


# --- coordinate median -----------------------------------------------------------


def test_median_odd_count() -> None:
    updates = rows([1, 9], [5, -4], [3, 0])

    result = CoordinateMedian().aggregate(updates, ones(3))

    assert result.vector.tolist() == [3.0, 0.0]
    assert result.weights.tolist() == [0.0, 0.0, 1.0]
    assert [e.index for e in result.excluded] == [0, 1]


def test_median_even_count_averages_middle_pair() -> None:
    updates = rows([1.0], [2.0], [3.0], [10.0])

    result = CoordinateMedian().aggregate(updates, ones(4))

    assert result.vector.tolist() == [2.5]
    assert result.weights.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_median_ignores_minority_outliers() -> None:
    updates = rows([1.0], [1.1], [0.9], [1e6], [-1e6])

    result = CoordinateMedian().aggregate(updates, ones(5))

    assert result.vector.tolist() == [pytest.approx(1.0)]


# --- Multi-Krum ------------------------------------------------------------------

KRUM_POINTS = rows([0.0], [1.0], [2.0], [10.0], [50.0])


def test_krum_scores_hand_computed() -> None:
    # n=5, f=1: each score sums the 5 - 1 - 2 = 2 smallest squared distances.
    # 0: 1 + 4; 1: 1 + 1; 2: 1 + 4; 10: 64 + 81; 50: 1600 + 2304.
    scores = krum_scores(KRUM_POINTS.double(), 1)

    assert scores.tolist() == [5.0, 2.0, 5.0, 145.0, 3904.0]


def test_multi_krum_keeps_lowest_scores() -> None:
    result = MultiKrum(n_byzantine=1).aggregate(KRUM_POINTS, ones(5))

    assert result.vector.tolist() == [pytest.approx((0 + 1 + 2 + 10) / 4)]
    assert result.selected == (0, 1, 2, 3)
    assert [(e.index, e.reason) for e in result.excluded] == [(4, "KRUM_SCORE")]
    assert result.weights.tolist() == [0.25, 0.25, 0.25, 0.25, 0.0]


def test_multi_krum_breaks_score_ties_by_index() -> None:
    # Scores 5, 2, 5: with m = 2 the rule keeps update 1, then update 0 over 2.
    result = MultiKrum(n_byzantine=1, n_selected=2).aggregate(KRUM_POINTS, ones(5))

    assert result.selected == (0, 1)
    assert result.vector.tolist() == [0.5]


def test_multi_krum_ignores_sample_counts() -> None:
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0, 1000.0])

    result = MultiKrum(n_byzantine=1).aggregate(KRUM_POINTS, weights)

    assert 4 not in result.selected


@pytest.mark.parametrize(
    ("n_updates", "n_byzantine"),
    [pytest.param(4, 1, id="n-equals-2f-plus-2"), pytest.param(6, 2, id="n-6-f-2")],
)
def test_multi_krum_rejects_too_few_updates(n_updates: int, n_byzantine: int) -> None:
    updates = torch.arange(n_updates, dtype=torch.float32).unsqueeze(1)

    with pytest.raises(UsageError, match="needs more than"):
        MultiKrum(n_byzantine=n_byzantine).aggregate(updates, ones(n_updates))


def test_multi_krum_accepts_minimum_update_count() -> None:
    updates = torch.arange(7, dtype=torch.float32).unsqueeze(1)

    result = MultiKrum(n_byzantine=2).aggregate(updates, ones(7))

    assert len(result.selected) == 5


# --- FLTrust ---------------------------------------------------------------------


def test_fltrust_hand_computed_case() -> None:
    reference = torch.tensor([1.0, 0.0])
    updates = rows([2, 0], [0, 3], [-1, 0], [1, 1])

    result = FLTrust().aggregate(updates, ones(4), reference)

    # Trust scores 1, 0, 0, s = cos 45 degrees. Rescaled to the reference norm 1:
    # (1, 0) and (s, s). Aggregate: (1 * (1, 0) + s * (s, s)) / (1 + s).
    s = 1 / math.sqrt(2)
    expected = torch.tensor([(1 + s * s) / (1 + s), (s * s) / (1 + s)])
    assert torch.allclose(result.vector, expected)
    assert torch.allclose(
        result.weights, torch.tensor([1 / (1 + s), 0, 0, s / (1 + s)]).double()
    )
    assert [(e.index, e.reason) for e in result.excluded] == [
        (1, "NON_POSITIVE_COSINE"),
        (2, "NON_POSITIVE_COSINE"),
    ]


def test_fltrust_neutralises_scaling() -> None:
    reference = torch.tensor([1.0, 1.0])
    honest = rows([1, 2], [2, 1])

    with_copy = FLTrust().aggregate(
        torch.cat([honest, rows([1, 2])]), ones(3), reference
    )
    with_scaled = FLTrust().aggregate(
        torch.cat([honest, rows([100, 200])]), ones(3), reference
    )

    # Rescaling to the reference norm makes a 100x update count like the original.
    assert torch.allclose(with_scaled.vector, with_copy.vector)
    assert float(with_scaled.vector.norm()) <= float(reference.norm()) + 1e-6


def test_fltrust_all_opposed_gives_zero_update() -> None:
    reference = torch.tensor([1.0, 0.0])
    updates = rows([-1, 0], [-2, 1])

    result = FLTrust().aggregate(updates, ones(2), reference)

    assert result.vector.tolist() == [0.0, 0.0]
    assert result.selected == ()


def test_fltrust_excludes_zero_update() -> None:
    reference = torch.tensor([1.0, 0.0])
    updates = rows([0, 0], [1, 0])

    result = FLTrust().aggregate(updates, ones(2), reference)

    assert [(e.index, e.reason) for e in result.excluded] == [(0, "ZERO_NORM")]
    assert result.vector.tolist() == [1.0, 0.0]


def test_fltrust_falls_back_to_median_reference() -> None:
    updates = rows([1, 0], [1, 0.2], [0.9, -0.1], [-5, 0])

    result = FLTrust().aggregate(updates, ones(4))

    # The median reference is (0.95, 0), so the opposed update (-5, 0) is excluded.
    assert [e.index for e in result.excluded] == [3]
    assert float(result.vector[0]) > 0


def test_fltrust_zero_reference_excludes_everything() -> None:
    updates = rows([1, 0], [0, 1])

    result = FLTrust().aggregate(updates, ones(2), torch.zeros(2))

    assert result.vector.tolist() == [0.0, 0.0]
    assert {e.reason for e in result.excluded} == {"ZERO_REFERENCE"}


# --- common interface ------------------------------------------------------------


@pytest.mark.parametrize("name", list(RULES))
def test_make_rule_builds_each_registered_rule(name: str) -> None:
    rule = make_rule(name)

    assert isinstance(rule, RULES[name])
    assert rule.name == name


def test_make_rule_passes_parameters() -> None:
    rule = make_rule("multi-krum", n_byzantine=2, n_selected=3)

    assert isinstance(rule, MultiKrum)
    assert (rule.n_byzantine, rule.n_selected) == (2, 3)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        pytest.param("krum", {}, id="unknown-name"),
        pytest.param("fedavg", {"beta": 0.1}, id="unexpected-parameter"),
        pytest.param("trimmed-mean", {"beta": 0.7}, id="invalid-value"),
    ],
)
def test_make_rule_rejects_invalid_requests(
    name: str, params: dict[str, object]
) -> None:
    with pytest.raises(UsageError):
        make_rule(name, **params)


@pytest.mark.parametrize(
    ("updates", "weights", "reference"),
    [
        pytest.param(torch.zeros(3), ones(3), None, id="one-dimensional"),
        pytest.param(torch.zeros(0, 2), ones(0), None, id="no-updates"),
        pytest.param(rows([1, float("nan")]), ones(1), None, id="nan-update"),
        pytest.param(rows([1, 2]), ones(2), None, id="weights-length"),
        pytest.param(rows([1, 2]), torch.tensor([-1.0]), None, id="negative-weight"),
        pytest.param(rows([1, 2]), torch.tensor([0.0]), None, id="all-zero-weights"),
        pytest.param(rows([1, 2]), ones(1), torch.zeros(3), id="reference-length"),
        pytest.param(
            torch.ones(1, 2, dtype=torch.int64), ones(1), None, id="integer-updates"
        ),
    ],
)
@pytest.mark.parametrize("name", list(RULES))
def test_rules_reject_invalid_inputs(
    name: str,
    updates: torch.Tensor,
    weights: torch.Tensor,
    reference: torch.Tensor | None,
) -> None:
    with pytest.raises(UsageError):
        make_rule(name).aggregate(updates, weights, reference)


@pytest.mark.parametrize("name", list(RULES))
def test_rules_return_input_dtype(name: str) -> None:
    updates = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))

    result = make_rule(name).aggregate(updates, ones(7), updates.mean(dim=0))

    assert result.vector.dtype == torch.float32
    assert result.vector.shape == (5,)
    assert result.weights.shape == (7,)


@pytest.mark.parametrize("name", list(RULES))
def test_rules_agree_on_identical_updates(name: str) -> None:
    update = torch.tensor([0.5, -1.0, 2.0])
    updates = update.repeat(7, 1)

    result = make_rule(name).aggregate(updates, ones(7), update)

    assert torch.allclose(result.vector, update)
