"""Aggregation rules over flattened model updates.

Every rule takes ``updates``, a 2-D tensor with one flattened update per row (see
:meth:`ztfm_chain.updates.ModelSchema.flatten`), ``weights``, the sample count of
each update, and an optional ``reference`` update, and returns an
:class:`AggregationResult`. Only :class:`FedAvg` uses the weights, and only
:class:`FLTrust` uses the reference; the others follow their papers and ignore them.
The maths runs in float64; the aggregate has the dtype of ``updates``. The rules read
``updates`` in blocks of columns (see :func:`column_blocks`), so a float32 matrix of
many large updates is never copied whole or converted to float64 at once.

Sources:

- FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS 2017.
- Trimmed mean and coordinate-wise median: Yin et al., "Byzantine-Robust
  Distributed Learning: Towards Optimal Statistical Rates", ICML 2018.
- Multi-Krum: Blanchard et al., "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent", NeurIPS 2017.
- FLTrust: Cao et al., "FLTrust: Byzantine-robust Federated Learning via Trust
  Bootstrapping", NDSS 2021.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ztfm_chain.exceptions import UsageError

__all__ = [
    "BLOCK_BYTES",
    "RULES",
    "AggregationResult",
    "AggregationRule",
    "CoordinateMedian",
    "Exclusion",
    "FLTrust",
    "FedAvg",
    "MultiKrum",
    "TrimmedMean",
    "column_blocks",
    "coordinate_median",
    "fltrust_combine",
    "fltrust_trust_scores",
    "krum_scores",
    "make_rule",
    "non_finite_rows",
    "row_norms_and_dots",
    "trimmed_mean",
    "weighted_mean",
]


@dataclass(frozen=True)
class Exclusion:
    """An update that did not contribute to the aggregate.

    ``reason`` is a stable code (``ZERO_WEIGHT``, ``KRUM_SCORE``,
    ``NON_POSITIVE_COSINE``, ``ZERO_NORM``, ``ZERO_REFERENCE``, ``TRIMMED``,
    ``NOT_MEDIAN``); ``detail`` is a sentence with the values behind it.
    """

    index: int
    reason: str
    detail: str


@dataclass(frozen=True)
class AggregationResult:
    """Aggregate of one round.

    ``weights`` has one float64 entry per update. For FedAvg and Multi-Krum it is the
    update's coefficient in the aggregate. For FLTrust it is the normalised trust
    score, which is the coefficient of the update after rescaling to the reference
    norm. These entries sum to 1 unless every update was excluded. For the
    coordinate-wise rules it is the fraction of coordinates in which the update's
    value was averaged.
    """

    vector: torch.Tensor
    weights: torch.Tensor
    excluded: tuple[Exclusion, ...]

    @property
    def selected(self) -> tuple[int, ...]:
        """Indices of the updates that contributed, in ascending order."""
        excluded = {exclusion.index for exclusion in self.excluded}
        return tuple(i for i in range(len(self.weights)) if i not in excluded)


class AggregationRule(ABC):
    """Base class of the rules: validates inputs, then calls ``_aggregate``."""

    name: ClassVar[str]

    def aggregate(
        self,
        updates: torch.Tensor,
        weights: torch.Tensor,
        reference: torch.Tensor | None = None,
    ) -> AggregationResult:
        """Aggregate the rows of ``updates``; raise UsageError on invalid input."""
        _check_inputs(updates, weights, reference)
        result = self._aggregate(
            updates,
            weights.to(torch.float64),
            None if reference is None else reference.to(torch.float64),
        )
        return AggregationResult(
            vector=result.vector.to(updates.dtype),
            weights=result.weights,
            excluded=tuple(sorted(result.excluded, key=lambda e: e.index)),
        )

    @abstractmethod
    def _aggregate(
        self,
        updates: torch.Tensor,
        weights: torch.Tensor,
        reference: torch.Tensor | None,
    ) -> AggregationResult:
        """Aggregate checked inputs: ``updates`` in any float dtype, the rest float64."""

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({params})"


class FedAvg(AggregationRule):
    """Federated averaging (McMahan et al. 2017), weighted by sample counts.

    The sample counts are self-reported, so the caller must bound them (see
    ``decode_update``'s ``max_sample_count``); an attacker otherwise takes over.
    """

    name = "fedavg"

    def _aggregate(
        self,
        updates: torch.Tensor,
        weights: torch.Tensor,
        reference: torch.Tensor | None,
    ) -> AggregationResult:
        shares = weights / weights.sum()
        excluded = [
            Exclusion(int(i), "ZERO_WEIGHT", f"update {int(i)} has sample count 0")
            for i in torch.nonzero(weights == 0).flatten()
        ]
        return AggregationResult(
            weighted_mean(updates, weights), shares, tuple(excluded)
        )


class TrimmedMean(AggregationRule):
    """Coordinate-wise trimmed mean (Yin et al. 2018).

    In each coordinate, the ``floor(beta * n)`` largest and smallest values are
    dropped and the rest averaged. ``beta`` is in [0, 0.5) and should be at least the
    expected fraction of Byzantine updates.
    """

    name = "trimmed-mean"

    def __init__(self, beta: float = 0.2) -> None:
        if not 0 <= beta < 0.5:
            raise UsageError(f"trimmed-mean beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    def _aggregate(
        self,
        updates: torch.Tensor,
        weights: torch.Tensor,
        reference: torch.Tensor | None,
    ) -> AggregationResult:
        trim = math.floor(self.beta * updates.shape[0])
        vector, used = trimmed_mean(updates, trim)
        excluded = [
            Exclusion(
                i,
                "TRIMMED",
                f"update {i} was trimmed in every coordinate (trim {trim})",
            )
            for i in range(len(used))
            if used[i] == 0
        ]
        return AggregationResult(vector, used, tuple(excluded))


class CoordinateMedian(AggregationRule):
    """Coordinate-wise median (Yin et al. 2018); even counts average the middle two."""

    name = "median"

    def _aggregate(
        self,
        updates: torch.Tensor,
        weights: torch.Tensor,
        reference: torch.Tensor | None,
    ) -> AggregationResult:
        vector, used = coordinate_median(updates)
        excluded = [
            Exclusion(i, "NOT_MEDIAN", f"update {i} was not a median in any coordinate")
            for i in range(len(used))
            if used[i] == 0
        ]
        return AggregationResult(vector, used, tuple(excluded))


class MultiKrum(AggregationRule):
    """Multi-Krum (Blanchard et al. 2017).

    ``n_byzantine`` (f) is the number of Byzantine updates assumed; the rule needs
    n > 2f + 2 updates. The ``n_selected`` (m) updates with the lowest Krum scores
    are averaged with equal weight; the default m is n - f.
    """

    name = "multi-krum"

    def __init__(self, n_byzantine: int = 0, n_selected: int | None = None) -> None:
        if n_byzantine < 0:
            raise UsageError(f"multi-krum n_byzantine must be >= 0, got {n_byzantine}")
        if n_selected is not None and n_selected < 1:
            raise UsageError(f"multi-krum n_selected must be >= 1, got {n_selected}")
        self.n_byzantine = n_byzantine
        self.n_selected = n_selected

    def _aggregate(
        self,
        updates: torch.Tensor,
        weights: torch.Tensor,
        reference: torch.Tensor | None,
    ) -> AggregationResult:
        n_updates = updates.shape[0]
        f = self.n_byzantine
        m = n_updates - f if self.n_selected is None else self.n_selected
        if n_updates <= 2 * f + 2:
            raise UsageError(
                f"multi-krum with n_byzantine={f} needs more than {2 * f + 2} "
                f"updates, got {n_updates}"
            )
        if m > n_updates:
            raise UsageError(
                f"multi-krum n_selected={m} exceeds the {n_updates} updates"
            )

        scores = krum_scores(updates, f)
        order = torch.sort(scores, stable=True).indices
        chosen = order[:m]
        shares = torch.zeros(n_updates, dtype=torch.float64)
        shares[chosen] = 1.0 / m

        excluded = []
        for rank, index in enumerate(order.tolist()):
            if rank >= m:
                excluded.append(
                    Exclusion(
                        index,
                        "KRUM_SCORE",
                        f"update {index} has Krum score {float(scores[index]):.6g}, "
                        f"rank {rank + 1} of {n_updates}; only {m} are kept",
                    )
                )
        vector = weighted_mean(updates, shares)
        return AggregationResult(vector, shares, tuple(excluded))


class FLTrust(AggregationRule):
    """FLTrust (Cao et al. 2021).

    Each update's trust score is the ReLU of its cosine similarity to the reference
    update. Each update is rescaled to the reference's norm, and the aggregate is
    the trust-weighted mean of the rescaled updates. The reference should be the
    update of the global model trained on the aggregator's root data set for the
    same local epochs. Without one, the coordinate-wise median of the updates is
    used, which is weaker: it has no root of trust beyond the honest majority.
    """

    name = "fltrust"

    def _aggregate(
        self,
        updates: torch.Tensor,
        weights: torch.Tensor,
        reference: torch.Tensor | None,
    ) -> AggregationResult:
        if reference is None:
            reference = coordinate_median(updates)[0]
        n_updates, dim = updates.shape
        reference_norm = float(torch.linalg.vector_norm(reference))
        if reference_norm == 0:
            unscored = tuple(
                Exclusion(i, "ZERO_REFERENCE", "the reference update has norm 0")
                for i in range(n_updates)
            )
            zeros = torch.zeros(n_updates, dtype=torch.float64)
            return AggregationResult(
                torch.zeros(dim, dtype=torch.float64), zeros, unscored
            )

        norms, dots = row_norms_and_dots(updates, reference)
        cosines = _cosines(norms, dots, reference_norm)
        scores = torch.relu(cosines)
        excluded: list[Exclusion] = []
        for i in range(n_updates):
            if norms[i] == 0:
                excluded.append(Exclusion(i, "ZERO_NORM", f"update {i} has norm 0"))
            elif scores[i] == 0:
                excluded.append(
                    Exclusion(
                        i,
                        "NON_POSITIVE_COSINE",
                        f"update {i} has cosine {float(cosines[i]):.4f} to the "
                        "reference",
                    )
                )

        total = scores.sum()
        if total == 0:
            zeros = torch.zeros(n_updates, dtype=torch.float64)
            return AggregationResult(
                torch.zeros(dim, dtype=torch.float64), zeros, tuple(excluded)
            )
        vector = _fltrust_combine(updates, reference_norm, norms, scores)
        return AggregationResult(vector, scores / total, tuple(excluded))


RULES: dict[str, type[AggregationRule]] = {
    "fedavg": FedAvg,
    "trimmed-mean": TrimmedMean,
    "median": CoordinateMedian,
    "multi-krum": MultiKrum,
    "fltrust": FLTrust,
}


def make_rule(name: str, **params: Any) -> AggregationRule:
    """Build the rule registered under ``name`` with keyword parameters."""
    try:
        rule_class = RULES[name]
    except KeyError:
        raise UsageError(
            f"unknown aggregation rule {name!r}; known rules: {', '.join(RULES)}"
        ) from None
    try:
        return rule_class(**params)
    except TypeError as exc:
        raise UsageError(f"invalid parameters for rule {name!r}: {exc}") from None


# --- maths -------------------------------------------------------------------------

#: Bytes of float64 working memory per block of columns (see :func:`column_blocks`).
BLOCK_BYTES = 32 * 1024 * 1024


def column_blocks(n_rows: int, n_columns: int) -> Iterator[slice]:
    """Split ``n_columns`` into slices whose float64 block of ``n_rows`` rows fits
    :data:`BLOCK_BYTES` (at least 1,024 columns per block).
    """
    width = max(1024, BLOCK_BYTES // (8 * max(1, n_rows)))
    for start in range(0, n_columns, width):
        yield slice(start, min(start + width, n_columns))


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """FedAvg: g = sum_k n_k * u_k / sum_k n_k, in float64."""
    weights = weights.to(torch.float64)
    return _weighted_sum(updates, weights) / weights.sum()


def trimmed_mean(updates: torch.Tensor, trim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise trimmed mean and each update's fraction of coordinates used.

    g_j = mean(sorted(u_1j, ..., u_nj)[trim : n - trim]) for each coordinate j.
    """
    n_updates = updates.shape[0]
    if trim < 0 or n_updates - 2 * trim < 1:
        raise UsageError(f"cannot trim {trim} from each end of {n_updates} updates")
    return _order_statistic_mean(updates, slice(trim, n_updates - trim))


def coordinate_median(updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise median and each update's fraction of coordinates used.

    g_j = median(u_1j, ..., u_nj); for even n, the mean of the two middle values.
    """
    n_updates = updates.shape[0]
    return _order_statistic_mean(
        updates, slice((n_updates - 1) // 2, n_updates // 2 + 1)
    )


def krum_scores(updates: torch.Tensor, n_byzantine: int) -> torch.Tensor:
    """Krum score of each update.

    s(i) = sum of ||u_i - u_j||^2 over the n - f - 2 updates j != i closest to u_i.
    """
    n_updates = updates.shape[0]
    neighbours = n_updates - n_byzantine - 2
    if neighbours < 1:
        raise UsageError(
            f"Krum needs n - f - 2 >= 1, got n={n_updates}, f={n_byzantine}"
        )
    # Squared distances add up over blocks of columns.
    distances = torch.zeros(n_updates, n_updates, dtype=torch.float64)
    for block in column_blocks(*updates.shape):
        part = updates[:, block].to(torch.float64)
        distances += torch.cdist(
            part, part, compute_mode="donot_use_mm_for_euclid_dist"
        ).square()
    distances.fill_diagonal_(math.inf)
    closest = torch.topk(distances, neighbours, dim=1, largest=False).values
    return closest.sum(dim=1)


def fltrust_trust_scores(
    updates: torch.Tensor, reference: torch.Tensor
) -> torch.Tensor:
    """FLTrust trust scores: TS_i = ReLU(cos(u_i, g_0)); 0 for a zero-norm update."""
    reference = reference.to(torch.float64)
    norms, dots = row_norms_and_dots(updates, reference)
    reference_norm = float(torch.linalg.vector_norm(reference))
    return torch.relu(_cosines(norms, dots, reference_norm))


def fltrust_combine(
    updates: torch.Tensor, reference: torch.Tensor, scores: torch.Tensor
) -> torch.Tensor:
    """FLTrust aggregate: g = sum_i TS_i * (||g_0|| / ||u_i||) * u_i / sum_i TS_i.

    Updates with score 0 are skipped, so a zero-norm update never divides by zero.
    """
    reference_norm = float(torch.linalg.vector_norm(reference.to(torch.float64)))
    norms, _ = row_norms_and_dots(updates, None)
    return _fltrust_combine(updates, reference_norm, norms, scores)


def row_norms_and_dots(
    updates: torch.Tensor, reference: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return each row's L2 norm and its dot product with ``reference``, in float64.

    The dot products are zeros when ``reference`` is None.
    """
    squares = torch.zeros(updates.shape[0], dtype=torch.float64)
    dots = torch.zeros(updates.shape[0], dtype=torch.float64)
    for block in column_blocks(*updates.shape):
        part = updates[:, block].to(torch.float64)
        squares += part.square().sum(dim=1)
        if reference is not None:
            dots += part @ reference[block].to(torch.float64)
    return squares.sqrt(), dots


def non_finite_rows(updates: torch.Tensor) -> list[int]:
    """Return the indices of the rows that contain NaN or an infinity."""
    # A row sum in float64 is NaN or infinite whenever the row has such a value, so
    # only the rows whose sum is not finite need the exact, slower test.
    sums = torch.zeros(updates.shape[0], dtype=torch.float64)
    for block in column_blocks(*updates.shape):
        sums += torch.sum(updates[:, block], dim=1, dtype=torch.float64)
    suspects = torch.nonzero(~torch.isfinite(sums)).flatten().tolist()
    return [i for i in suspects if not bool(torch.isfinite(updates[i]).all())]


def _fltrust_combine(
    updates: torch.Tensor,
    reference_norm: float,
    norms: torch.Tensor,
    scores: torch.Tensor,
) -> torch.Tensor:
    active = scores > 0
    scale = torch.zeros_like(scores)
    scale[active] = scores[active] * reference_norm / norms[active]
    return _weighted_sum(updates, scale) / scores.sum()


def _weighted_sum(updates: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Return sum_k c_k * u_k in float64, one block of columns at a time."""
    vector = torch.empty(updates.shape[1], dtype=torch.float64)
    column = coefficients.to(torch.float64).unsqueeze(1)
    for block in column_blocks(*updates.shape):
        vector[block] = (column * updates[:, block].to(torch.float64)).sum(dim=0)
    return vector


def _order_statistic_mean(
    updates: torch.Tensor, kept_ranks: slice
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the sorted values at ``kept_ranks`` in each column, and usage shares.

    Ties keep update order. The usage share of an update is the fraction of the
    columns in which its value was averaged.
    """
    n_updates, n_columns = updates.shape
    vector = torch.empty(n_columns, dtype=torch.float64)
    used = torch.zeros(n_updates, dtype=torch.int64)
    for block in column_blocks(n_updates, n_columns):
        # Sorting rows of the contiguous transpose is faster than sorting along dim 0.
        part = updates[:, block].to(torch.float64).t().contiguous()
        values, order = torch.sort(part, dim=1, stable=True)
        vector[block] = values[:, kept_ranks].mean(dim=1)
        used += torch.bincount(order[:, kept_ranks].reshape(-1), minlength=n_updates)
    return vector, used.to(torch.float64) / n_columns


def _cosines(
    norms: torch.Tensor, dots: torch.Tensor, reference_norm: float
) -> torch.Tensor:
    denominator = norms * reference_norm
    cosines = torch.zeros_like(dots)
    nonzero = denominator > 0
    cosines[nonzero] = (dots[nonzero] / denominator[nonzero]).clamp(-1.0, 1.0)
    return cosines


def _check_inputs(
    updates: torch.Tensor, weights: torch.Tensor, reference: torch.Tensor | None
) -> None:
    if updates.dim() != 2 or updates.shape[0] < 1 or updates.shape[1] < 1:
        raise UsageError(
            "updates must be a 2-D tensor with at least one row and one column, "
            f"got shape {list(updates.shape)}"
        )
    if not updates.dtype.is_floating_point:
        raise UsageError(f"updates must be floating point, got {updates.dtype}")
    rows = non_finite_rows(updates)
    if rows:
        raise UsageError(f"updates contain NaN or infinity in rows {rows}")
    n_updates = updates.shape[0]
    if weights.shape != (n_updates,):
        raise UsageError(
            f"weights must have shape [{n_updates}], got {list(weights.shape)}"
        )
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise UsageError(f"weights must be finite and >= 0, got {weights.tolist()}")
    if float(weights.sum()) <= 0:
        raise UsageError("weights must not all be 0")
    if reference is not None:
        if reference.shape != (updates.shape[1],):
            raise UsageError(
                f"reference must have shape [{updates.shape[1]}], "
                f"got {list(reference.shape)}"
            )
        if not bool(torch.isfinite(reference).all()):
            raise UsageError("reference contains NaN or infinity")
