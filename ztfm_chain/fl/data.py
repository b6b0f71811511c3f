"""The scikit-learn digits data set and its split across simulated devices.

``load_digits`` ships with scikit-learn: 1,797 grey-scale 8x8 images of the digits 0
to 9, with pixel values 0 to 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ztfm_chain.exceptions import UsageError
from ztfm_chain.fl.models import DIGITS_CLASSES

__all__ = [
    "DigitsSplit",
    "dirichlet_split",
    "iid_split",
    "load_digits_split",
]

_DIGITS_MAX_PIXEL = 16.0


@dataclass(frozen=True)
class DigitsSplit:
    """Disjoint parts of the digits data set.

    Images are float32 rows of 64 pixels scaled to [0, 1]; labels are int64. The pool
    is divided among devices, the root set belongs to the aggregator (FLTrust's root
    data set) and the test set is held out for evaluation. The ``*_indices`` fields
    are the rows' positions in scikit-learn's ``load_digits`` order.
    """

    pool_indices: torch.Tensor
    root_indices: torch.Tensor
    test_indices: torch.Tensor
    pool_x: torch.Tensor
    pool_y: torch.Tensor
    root_x: torch.Tensor
    root_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits_split(
    *, root_size: int = 100, test_size: int = 360, seed: int = 0
) -> DigitsSplit:
    """Load the digits and split them, stratified by label, into pool, root and test.

    With the defaults, the 1,797 images give 1,337 pool, 100 root and 360 test images.
    """
    images, labels = load_digits(return_X_y=True)
    n_samples = len(labels)
    if root_size < DIGITS_CLASSES or test_size < DIGITS_CLASSES:
        raise UsageError(
            f"root_size ({root_size}) and test_size ({test_size}) must each be at "
            f"least {DIGITS_CLASSES} so that every class appears"
        )
    if root_size + test_size > n_samples - DIGITS_CLASSES:
        raise UsageError(
            f"root_size + test_size ({root_size + test_size}) leaves too few of the "
            f"{n_samples} digits for the device pool"
        )
    x = torch.from_numpy((images / _DIGITS_MAX_PIXEL).astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    everything = np.arange(n_samples)
    rest, test = train_test_split(
        everything, test_size=test_size, stratify=labels, random_state=seed
    )
    pool, root = train_test_split(
        rest, test_size=root_size, stratify=labels[rest], random_state=seed
    )
    pool_indices, root_indices, test_indices = (
        torch.from_numpy(np.sort(part)) for part in (pool, root, test)
    )
    return DigitsSplit(
        pool_indices=pool_indices,
        root_indices=root_indices,
        test_indices=test_indices,
        pool_x=x[pool_indices],
        pool_y=y[pool_indices],
        root_x=x[root_indices],
        root_y=y[root_indices],
        test_x=x[test_indices],
        test_y=y[test_indices],
    )


def dirichlet_split(
    labels: torch.Tensor,
    n_devices: int,
    alpha: float = 0.5,
    *,
    seed: int,
    min_samples: int = 10,
    max_attempts: int = 1000,
) -> list[torch.Tensor]:
    """Split sample indices across devices with label skew (non-IID).

    For each class, the shares of the devices are drawn from a symmetric Dirichlet
    distribution with concentration ``alpha`` (smaller is more skewed). Draws are
    repeated until every device has at least ``min_samples`` samples, at most
    ``max_attempts`` times before UsageError is raised. Returns one
    sorted int64 index tensor per device; together they cover every index once.
    """
    label_array = _labels_to_numpy(labels)
    _check_device_count(len(label_array), n_devices, min_samples)
    if not alpha > 0:
        raise UsageError(f"alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(label_array)
    for _ in range(max_attempts):
        assignment: list[list[int]] = [[] for _ in range(n_devices)]
        for cls in classes:
            members = np.flatnonzero(label_array == cls)
            rng.shuffle(members)
            shares = rng.dirichlet(np.full(n_devices, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for device, part in enumerate(np.split(members, cuts)):
                assignment[device].extend(part.tolist())
        if min(len(part) for part in assignment) >= min_samples:
            return [
                torch.tensor(sorted(part), dtype=torch.int64) for part in assignment
            ]
    raise UsageError(
        f"no Dirichlet(alpha={alpha}) draw in {max_attempts} attempts gave "
        f"each of {n_devices} devices {min_samples} samples; raise alpha or lower "
        "min_samples"
    )


def iid_split(labels: torch.Tensor, n_devices: int, *, seed: int) -> list[torch.Tensor]:
    """Split sample indices uniformly at random into ``n_devices`` near-equal parts.

    Returns one sorted int64 index tensor per device; sizes differ by at most one.
    """
    label_array = _labels_to_numpy(labels)
    _check_device_count(len(label_array), n_devices, 1)
    order = np.random.default_rng(seed).permutation(len(label_array))
    return [
        torch.tensor(np.sort(part), dtype=torch.int64)
        for part in np.array_split(order, n_devices)
    ]


def _labels_to_numpy(labels: torch.Tensor) -> np.ndarray:
    if labels.dim() != 1:
        raise UsageError(f"labels must be 1-D, got shape {list(labels.shape)}")
    return labels.detach().cpu().numpy()


def _check_device_count(n_samples: int, n_devices: int, min_samples: int) -> None:
    if n_devices < 1:
        raise UsageError(f"n_devices must be positive, got {n_devices}")
    if min_samples < 1:
        raise UsageError(f"min_samples must be positive, got {min_samples}")
    if n_devices * min_samples > n_samples:
        raise UsageError(
            f"{n_samples} samples cannot give {n_devices} devices "
            f"{min_samples} samples each"
        )
