"""Root-set loss check, on hand-made scores and on real digits updates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from ztfm_chain.exceptions import UsageError
from ztfm_chain.fl.anomaly import AnomalyFlag, flag_anomalies, score_updates
from ztfm_chain.fl.attacks import flip_labels
from ztfm_chain.fl.data import (
    DigitsSplit,
    dirichlet_split,
    iid_split,
    load_digits_split,
)
from ztfm_chain.fl.models import DIGITS_WIDTHS, init_mlp_state
from ztfm_chain.fl.training import train_local_many
from ztfm_chain.fl.validation import (
    RootLossScores,
    flag_root_loss,
    merge_flags,
    root_loss_changes,
)
from ztfm_chain.updates import ModelSchema

N_DEVICES = 10


@dataclass(frozen=True)
class Round:
    """Updates of one round: N_DEVICES honest ones, then extras, then the root's."""

    schema: ModelSchema
    base: dict[str, torch.Tensor]
    updates: torch.Tensor
    reference: torch.Tensor


@pytest.fixture(scope="module")
def split() -> DigitsSplit:
    return load_digits_split(seed=0)


def _train_round(
    split: DigitsSplit,
    base: dict[str, torch.Tensor],
    datasets: list[tuple[torch.Tensor, torch.Tensor]],
) -> Round:
    schema = ModelSchema.from_state_dict(base)
    everything = [*datasets, (split.root_x, split.root_y)]
    results = train_local_many(base, everything, seeds=list(range(len(everything))))
    rows = torch.stack([schema.flatten(r.delta) for r in results]).to(torch.float64)
    return Round(schema, base, rows[:-1], rows[-1])


def _second_round(split: DigitsSplit, parts: list[torch.Tensor]) -> Round:
    """Train one honest FedAvg round from a seeded model, then one more round.

    The second round adds an update trained on device 0's data with flipped
    labels as the last update.
    """
    base = init_mlp_state(DIGITS_WIDTHS, seed=0)
    honest = [(split.pool_x[p], split.pool_y[p]) for p in parts]
    first = _train_round(split, base, honest)
    schema = first.schema
    base = schema.unflatten(schema.flatten(base).double() + first.updates.mean(0))
    flipped = (split.pool_x[parts[0]], flip_labels(split.pool_y[parts[0]]))
    return _train_round(split, base, [*honest, flipped])


@pytest.fixture(scope="module")
def non_iid_round(split: DigitsSplit) -> Round:
    return _second_round(split, dirichlet_split(split.pool_y, N_DEVICES, 0.5, seed=0))


@pytest.fixture(scope="module")
def iid_round(split: DigitsSplit) -> Round:
    return _second_round(split, iid_split(split.pool_y, N_DEVICES, seed=0))


def _flags(round: Round, split: DigitsSplit) -> tuple[AnomalyFlag, ...]:
    scores = score_updates(round.updates, round.reference)
    losses = root_loss_changes(
        round.schema,
        round.base,
        round.updates,
        split.root_x,
        split.root_y,
        reference=round.reference,
    )
    return flag_root_loss(losses, scores.cosine)


def test_label_flip_passes_cosine_check(non_iid_round: Round) -> None:
    # The case the root-set loss check exists for: a positive cosine.
    scores = score_updates(non_iid_round.updates, non_iid_round.reference)

    assert float(scores.cosine[N_DEVICES]) > 0
    assert N_DEVICES not in {f.index for f in flag_anomalies(scores)}


def test_label_flip_flagged_non_iid(non_iid_round: Round, split: DigitsSplit) -> None:
    flags = _flags(non_iid_round, split)

    assert [flag.index for flag in flags] == [N_DEVICES]
    assert flags[0].reasons == ("HIGH_ROOT_LOSS",)
    assert "root-set loss change " in flags[0].detail


def test_label_flip_flagged_iid(iid_round: Round, split: DigitsSplit) -> None:
    assert [flag.index for flag in _flags(iid_round, split)] == [N_DEVICES]


def test_honest_rounds_flag_nobody(
    non_iid_round: Round, iid_round: Round, split: DigitsSplit
) -> None:
    for round in (non_iid_round, iid_round):
        honest = Round(
            round.schema, round.base, round.updates[:N_DEVICES], round.reference
        )
        assert _flags(honest, split) == ()


def test_label_flip_lowers_root_loss_least(
    non_iid_round: Round, split: DigitsSplit
) -> None:
    losses = root_loss_changes(
        non_iid_round.schema,
        non_iid_round.base,
        non_iid_round.updates,
        split.root_x,
        split.root_y,
        reference=non_iid_round.reference,
    )

    assert losses.reference_change is not None
    assert losses.reference_change < 0
    flipped = float(losses.changes[N_DEVICES])
    assert flipped > float(losses.changes[:N_DEVICES].max())
    assert flipped > 0.5 * losses.reference_change


def test_root_loss_is_deterministic(non_iid_round: Round, split: DigitsSplit) -> None:
    def measure() -> RootLossScores:
        return root_loss_changes(
            non_iid_round.schema,
            non_iid_round.base,
            non_iid_round.updates,
            split.root_x,
            split.root_y,
            reference=non_iid_round.reference,
        )

    first, second = measure(), measure()

    assert torch.equal(first.changes, second.changes)
    assert first.changes.dtype == torch.float64
    assert first.reference_change == second.reference_change
    assert first.base_loss == second.base_loss


def test_zero_update_changes_nothing(non_iid_round: Round, split: DigitsSplit) -> None:
    zero = torch.zeros(1, non_iid_round.schema.numel, dtype=torch.float64)

    losses = root_loss_changes(
        non_iid_round.schema, non_iid_round.base, zero, split.root_x, split.root_y
    )

    assert losses.changes.tolist() == [0.0]
    assert losses.reference_change is None
    assert losses.base_loss > 0


def _scores(changes: list[float], reference_change: float | None) -> RootLossScores:
    return RootLossScores(
        base_loss=2.0,
        changes=torch.tensor(changes, dtype=torch.float64),
        reference_change=reference_change,
        step=0.2,
    )


def test_threshold_edges() -> None:
    # threshold = 0.025 + 1.0 * (-0.02) = 0.005; both comparisons are strict.
    scores = _scores([0.005, 0.0051, 0.0051, 0.0051, -0.5], -0.02)
    cosine = torch.tensor([0.0, 0.0, 0.1, 0.0999, -1.0], dtype=torch.float64)

    flags = flag_root_loss(
        scores, cosine, margin=0.025, reference_share=1.0, max_cosine=0.1
    )

    assert [flag.index for flag in flags] == [1, 3]


def test_min_base_loss_edge() -> None:
    # The base loss in _scores is 2.0; the check runs from min_base_loss on.
    scores = _scores([0.1], None)
    cosine = torch.zeros(1, dtype=torch.float64)

    assert flag_root_loss(scores, cosine, min_base_loss=2.0) != ()
    assert flag_root_loss(scores, cosine, min_base_loss=2.0001) == ()
    assert flag_root_loss(scores, cosine, min_base_loss=0.0) != ()


def test_threshold_without_reference_is_margin() -> None:
    scores = _scores([0.02, 0.03], None)
    cosine = torch.zeros(2, dtype=torch.float64)

    flags = flag_root_loss(scores, cosine, margin=0.025, reference_share=1.0)

    assert [flag.index for flag in flags] == [1]
    assert "threshold +0.0250" in flags[0].detail


def test_reference_share_scales_reference() -> None:
    # A root-set update that lowers the loss by 0.5 lowers the threshold with it.
    scores = _scores([-0.1], -0.5)
    cosine = torch.zeros(1, dtype=torch.float64)

    assert flag_root_loss(scores, cosine, margin=0.0, reference_share=0.0) == ()
    assert flag_root_loss(scores, cosine, margin=0.0, reference_share=1.0) != ()


def test_max_cosine_one_checks_loss_only() -> None:
    scores = _scores([0.1], None)
    cosine = torch.tensor([0.99], dtype=torch.float64)

    assert flag_root_loss(scores, cosine, margin=0.0, max_cosine=1.0) != ()
    assert flag_root_loss(scores, cosine, margin=0.0, max_cosine=0.5) == ()


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("margin", -0.1, "margin must be a finite number >= 0, got -0.1"),
        ("margin", math.nan, "margin must be a finite number >= 0, got nan"),
        ("reference_share", -1.0, "reference_share must be a finite number >= 0"),
        ("reference_share", math.inf, "got inf"),
        ("max_cosine", -1.0, "max_cosine must be in (-1, 1], got -1.0"),
        ("max_cosine", 1.5, "got 1.5"),
        ("min_base_loss", -1.0, "min_base_loss must be a finite number >= 0, got -1.0"),
        ("min_base_loss", math.nan, "got nan"),
    ],
)
def test_flag_rejects_invalid_thresholds(
    keyword: str, value: float, message: str
) -> None:
    scores = _scores([0.0], None)
    cosine = torch.zeros(1, dtype=torch.float64)

    with pytest.raises(UsageError) as raised:
        flag_root_loss(scores, cosine, **{keyword: value})  # type: ignore[arg-type]

    assert message in str(raised.value)


def test_flag_rejects_cosine_count_mismatch() -> None:
    with pytest.raises(UsageError, match=r"got \[3\] cosines for \[2\] loss changes"):
        flag_root_loss(_scores([0.0, 0.0], None), torch.zeros(3))


@pytest.mark.parametrize("step", [0.0, -0.2, math.nan, math.inf])
def test_changes_reject_invalid_step(
    non_iid_round: Round, split: DigitsSplit, step: float
) -> None:
    with pytest.raises(
        UsageError, match=f"step must be a positive finite number, got {step}"
    ):
        root_loss_changes(
            non_iid_round.schema,
            non_iid_round.base,
            non_iid_round.updates,
            split.root_x,
            split.root_y,
            step=step,
        )


def test_changes_reject_invalid_inputs(
    non_iid_round: Round, split: DigitsSplit
) -> None:
    schema, base = non_iid_round.schema, non_iid_round.base
    updates = non_iid_round.updates
    x, y = split.root_x, split.root_y
    cases = [
        ((schema, base, updates[:, :5], x, y), {}, "updates must have shape [n, 9610]"),
        (
            (schema, base, updates, x, y),
            {"reference": torch.zeros(3)},
            "reference must have shape [9610], got [3]",
        ),
        (
            (schema, base, updates, x[:, :8], y),
            {},
            "root data must have shape [n > 0, 64], got [100, 8]",
        ),
        (
            (schema, base, updates, x, y[:5]),
            {},
            "root labels must be int64 of shape [100]",
        ),
        ((schema, base, updates, x, y.to(torch.int32)), {}, "got torch.int32"),
        (
            (schema, base, updates, x, y + 5),
            {},
            "root labels must be in 0..9, got 5..14",
        ),
        ((schema, base, updates * math.inf, x, y), {}, "updates must be finite"),
        (
            (schema, base, updates, x, y),
            {"reference": non_iid_round.reference * math.nan},
            "reference update must be finite",
        ),
        ((schema, {"w": torch.zeros(2)}, updates, x, y), {}, "not an MLP state dict"),
    ]
    for args, keywords, message in cases:
        with pytest.raises(UsageError) as raised:
            root_loss_changes(*args, **keywords)  # type: ignore[arg-type]
        assert message in str(raised.value), message


def test_merge_joins_reasons_by_index() -> None:
    first = (AnomalyFlag(2, ("LOW_COSINE",), "a"), AnomalyFlag(0, ("X",), "b"))
    second = (AnomalyFlag(2, ("HIGH_ROOT_LOSS",), "c"),)

    merged = merge_flags(first, second)

    assert list(merged) == [0, 2]
    assert merged[2].reasons == ("LOW_COSINE", "HIGH_ROOT_LOSS")
    assert merged[2].detail == "a; c"
    assert merged[0] == AnomalyFlag(0, ("X",), "b")
