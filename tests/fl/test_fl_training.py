"""Digits data splits, MLP models and local training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ztfm_chain.exceptions import UsageError
from ztfm_chain.fl.data import dirichlet_split, iid_split, load_digits_split
from ztfm_chain.fl.models import (
    DIGITS_WIDTHS,
    MLP,
    DigitsMLP,
    init_mlp_state,
    mlp_for_parameter_count,
    mlp_parameter_count,
    mlp_widths,
)
from ztfm_chain.fl.training import evaluate, predict, train_local, train_local_many

SPLIT = load_digits_split(seed=0)


# --- data ------------------------------------------------------------------------


def test_digits_split_sizes_and_range() -> None:
    assert len(SPLIT.pool_y) == 1337
    assert len(SPLIT.root_y) == 100
    assert len(SPLIT.test_y) == 360
    assert SPLIT.pool_x.dtype == torch.float32
    assert float(SPLIT.pool_x.min()) == 0.0
    assert float(SPLIT.pool_x.max()) == 1.0


def test_digits_split_parts_are_disjoint() -> None:
    indices = [SPLIT.pool_indices, SPLIT.root_indices, SPLIT.test_indices]
    combined = torch.cat(indices)

    assert len(set(combined.tolist())) == 1797


def test_digits_split_is_stratified() -> None:
    assert SPLIT.root_y.bincount().tolist() == [10] * 10
    assert int(SPLIT.test_y.bincount().min()) >= 35


def test_digits_split_depends_on_seed() -> None:
    other = load_digits_split(seed=1)

    assert not torch.equal(other.root_indices, SPLIT.root_indices)
    assert torch.equal(load_digits_split(seed=0).root_indices, SPLIT.root_indices)


def test_dirichlet_split_covers_pool_with_minimum() -> None:
    parts = dirichlet_split(SPLIT.pool_y, 20, 0.5, seed=4, min_samples=10)

    combined = torch.cat(parts).tolist()
    assert sorted(combined) == list(range(1337))
    assert min(len(part) for part in parts) >= 10


def test_dirichlet_split_more_skewed_than_iid() -> None:
    def mean_max_class_share(parts: list[torch.Tensor]) -> float:
        shares = [
            float(SPLIT.pool_y[part].bincount(minlength=10).max()) / len(part)
            for part in parts
        ]
        return float(np.mean(shares))

    skewed = mean_max_class_share(dirichlet_split(SPLIT.pool_y, 20, 0.5, seed=4))
    uniform = mean_max_class_share(iid_split(SPLIT.pool_y, 20, seed=4))

    assert skewed > 0.3
    assert uniform < 0.25


def test_dirichlet_split_is_reproducible() -> None:
    first = dirichlet_split(SPLIT.pool_y, 10, 0.5, seed=9)
    second = dirichlet_split(SPLIT.pool_y, 10, 0.5, seed=9)

    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_iid_split_balanced_sizes() -> None:
    parts = iid_split(SPLIT.pool_y, 20, seed=1)

    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sorted(torch.cat(parts).tolist()) == list(range(1337))


@pytest.mark.parametrize(
    ("n_devices", "min_samples", "alpha"),
    [
        pytest.param(0, 10, 0.5, id="no-devices"),
        pytest.param(200, 10, 0.5, id="too-many-devices"),
        pytest.param(20, 10, 0.0, id="zero-alpha"),
        pytest.param(100, 13, 0.01, id="unreachable-minimum"),
    ],
)
def test_dirichlet_split_rejects_impossible_requests(
    n_devices: int, min_samples: int, alpha: float
) -> None:
    with pytest.raises(UsageError):
        dirichlet_split(
            SPLIT.pool_y,
            n_devices,
            alpha,
            seed=0,
            min_samples=min_samples,
            max_attempts=20,
        )


# --- models ----------------------------------------------------------------------


def test_digits_mlp_shape() -> None:
    model = DigitsMLP()

    assert sum(p.numel() for p in model.parameters()) == 9610
    assert model(torch.zeros(5, 64)).shape == (5, 10)
    assert mlp_widths(model.state_dict()) == DIGITS_WIDTHS


@pytest.mark.parametrize("target", [10_000, 100_000, 1_000_000])
def test_mlp_for_parameter_count_is_close(target: int) -> None:
    model = mlp_for_parameter_count(target)

    count = sum(p.numel() for p in model.parameters())
    assert count == mlp_parameter_count(model.widths)
    assert abs(count - target) / target < 0.01


def test_init_state_seeded_without_global_rng() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)

    first = init_mlp_state(DIGITS_WIDTHS, seed=5)
    after = torch.rand(1)
    second = init_mlp_state(DIGITS_WIDTHS, seed=5)
    third = init_mlp_state(DIGITS_WIDTHS, seed=6)

    assert torch.equal(after, expected_next)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["layers.0.weight"], third["layers.0.weight"])


def test_mlp_widths_rejects_other_state_dicts() -> None:
    with pytest.raises(UsageError, match="not an MLP state dict"):
        mlp_widths({"conv.weight": torch.zeros(1, 1, 3, 3)})


def test_mlp_state_matches_module_forward() -> None:
    model = MLP((64, 20, 20, 10))
    x = SPLIT.test_x[:8]

    assert torch.allclose(predict(model.state_dict(), x), model(x).detach(), atol=1e-6)


# --- training --------------------------------------------------------------------

STATE = init_mlp_state(DIGITS_WIDTHS, seed=0)
X = SPLIT.pool_x[:70]
Y = SPLIT.pool_y[:70]


def test_train_local_is_deterministic_by_seed() -> None:
    first_state, first_delta = train_local(STATE, X, Y, seed=1)
    second_state, second_delta = train_local(STATE, X, Y, seed=1)
    _, other_delta = train_local(STATE, X, Y, seed=2)

    for name in STATE:
        assert torch.equal(first_state[name], second_state[name])
        assert torch.equal(first_delta[name], second_delta[name])
    assert not torch.equal(
        first_delta["layers.0.weight"], other_delta["layers.0.weight"]
    )


def test_train_local_delta_is_new_minus_old() -> None:
    new_state, delta = train_local(STATE, X, Y, seed=1)

    for name in STATE:
        assert torch.allclose(delta[name], new_state[name] - STATE[name])
    assert float(delta["layers.1.bias"].abs().sum()) > 0


def test_train_local_leaves_input_state() -> None:
    before = {name: t.clone() for name, t in STATE.items()}

    train_local(STATE, X, Y, seed=1)

    assert all(torch.equal(before[name], STATE[name]) for name in STATE)


def test_train_local_single_step_matches_sgd() -> None:
    # One epoch with a batch covering all samples is one full-batch SGD step.
    model = DigitsMLP()
    model.load_state_dict(STATE)
    loss = torch.nn.functional.cross_entropy(model(X), Y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    names = [name for name, _ in model.named_parameters()]
    expected = {
        name: (param - 0.1 * grad).detach()
        for name, param, grad in zip(names, model.parameters(), grads, strict=True)
    }

    new_state, _ = train_local(STATE, X, Y, epochs=1, batch_size=len(Y), lr=0.1, seed=0)

    for name, tensor in expected.items():
        assert torch.allclose(new_state[name], tensor, atol=1e-6)


def test_train_local_improves_accuracy() -> None:
    state = STATE
    for epoch_seed in range(3):
        state, _ = train_local(
            state, SPLIT.pool_x, SPLIT.pool_y, epochs=1, seed=epoch_seed
        )

    assert evaluate(state, SPLIT.test_x, SPLIT.test_y) > 0.85
    assert evaluate(STATE, SPLIT.test_x, SPLIT.test_y) < 0.3


def test_train_local_many_matches_sequential() -> None:
    parts = dirichlet_split(SPLIT.pool_y, 6, 0.5, seed=2, min_samples=5)
    datasets = [(SPLIT.pool_x[p], SPLIT.pool_y[p]) for p in parts]
    seeds = [11, 12, 13, 14, 15, 16]

    batched = train_local_many(STATE, datasets, seeds=seeds, epochs=2, batch_size=16)

    for (x, y), seed, result in zip(datasets, seeds, batched, strict=True):
        _, delta = train_local(STATE, x, y, seed=seed, epochs=2, batch_size=16)
        for name in STATE:
            assert torch.allclose(result.delta[name], delta[name], atol=1e-5)


def test_train_local_many_separate_start_states() -> None:
    other = init_mlp_state(DIGITS_WIDTHS, seed=1)
    datasets = [(X, Y), (X, Y)]

    batched = train_local_many([STATE, other], datasets, seeds=[5, 5])

    for start, result in zip([STATE, other], batched, strict=True):
        _, delta = train_local(start, X, Y, seed=5)
        for name in STATE:
            assert torch.allclose(result.delta[name], delta[name], atol=1e-5)
            assert torch.allclose(
                result.state[name], start[name] + delta[name], atol=1e-5
            )


def test_evaluate_counts_non_finite_rows_as_wrong() -> None:
    broken = {name: t.clone() for name, t in STATE.items()}
    broken["layers.1.bias"][0] = float("nan")

    assert evaluate(broken, SPLIT.test_x, SPLIT.test_y) == 0.0


@pytest.mark.parametrize(
    ("data", "labels"),
    [
        pytest.param(X[:, :10], Y, id="wrong-width"),
        pytest.param(X, Y[:5], id="label-count"),
        pytest.param(X, Y + 10, id="label-out-of-range"),
        pytest.param(X[:0], Y[:0], id="empty"),
    ],
)
def test_train_local_rejects_invalid_data(
    data: torch.Tensor, labels: torch.Tensor
) -> None:
    with pytest.raises(UsageError):
        train_local(STATE, data, labels, seed=0)
