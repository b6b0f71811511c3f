"""Simulated attacks."""

from __future__ import annotations

import pytest
import torch

from ztfm_chain.exceptions import UsageError
from ztfm_chain.fl.attacks import (
    flip_labels,
    gaussian_noise,
    inflate_sample_count,
    model_replacement,
    scale_update,
    sign_flip,
    sybil_copies,
)

UPDATE = torch.tensor([1.0, -2.0, 0.5])


def test_sign_flip_negates_and_scales() -> None:
    assert sign_flip(UPDATE).tolist() == [-1.0, 2.0, -0.5]
    assert sign_flip(UPDATE, 5.0).tolist() == [-5.0, 10.0, -2.5]


def test_scaling_multiplies() -> None:
    assert scale_update(UPDATE).tolist() == [10.0, -20.0, 5.0]


def test_gaussian_noise_std() -> None:
    update = torch.zeros(20_000)

    noise = gaussian_noise(update, std=0.05, generator=torch.Generator().manual_seed(1))

    assert noise.shape == update.shape
    assert float(noise.std()) == pytest.approx(0.05, rel=0.03)
    assert abs(float(noise.mean())) < 0.002


def test_gaussian_noise_is_seeded() -> None:
    first = gaussian_noise(UPDATE, std=1.0, generator=torch.Generator().manual_seed(3))
    second = gaussian_noise(UPDATE, std=1.0, generator=torch.Generator().manual_seed(3))

    assert torch.equal(first, second)


def test_model_replacement_boosts_target() -> None:
    assert model_replacement(UPDATE, boost=4.0).tolist() == [4.0, -8.0, 2.0]


def test_flip_labels_mirrors_classes() -> None:
    labels = torch.tensor([0, 1, 5, 9])

    assert flip_labels(labels).tolist() == [9, 8, 4, 0]


def test_sybil_copies_are_identical_rows() -> None:
    copies = sybil_copies(UPDATE, 3)

    assert copies.shape == (3, 3)
    assert all(torch.equal(row, UPDATE) for row in copies)


def test_inflate_sample_count_claims_cap() -> None:
    assert inflate_sample_count(40, claimed=1000) == 1000
    assert inflate_sample_count(4000, claimed=1000) == 4000


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: sign_flip(UPDATE, 0.0), id="sign-flip-zero-scale"),
        pytest.param(lambda: scale_update(UPDATE, -1.0), id="negative-scaling"),
        pytest.param(
            lambda: gaussian_noise(UPDATE, std=0.0, generator=torch.Generator()),
            id="zero-noise",
        ),
        pytest.param(lambda: sybil_copies(UPDATE, 0), id="no-copies"),
        pytest.param(lambda: flip_labels(torch.tensor([10])), id="label-out-of-range"),
        pytest.param(lambda: inflate_sample_count(0, claimed=5), id="zero-count"),
    ],
)
def test_attacks_reject_invalid_parameters(call: object) -> None:
    with pytest.raises(UsageError):
        call()  # type: ignore[operator]
