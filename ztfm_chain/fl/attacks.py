"""Simulated adversaries for tests and benchmarks.

Update attacks take the attacker's flattened honest update and return what it
submits instead. Label flipping changes the training data before local training, and
sample-count inflation changes the self-reported weight.
"""

from __future__ import annotations

import torch

from ztfm_chain.exceptions import UsageError

__all__ = [
    "flip_labels",
    "gaussian_noise",
    "inflate_sample_count",
    "model_replacement",
    "scale_update",
    "sign_flip",
    "sybil_copies",
]


def sign_flip(update: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Return ``-scale * update``: gradient ascent instead of descent."""
    if not scale > 0:
        raise UsageError(f"sign-flip scale must be positive, got {scale}")
    return -scale * update


def gaussian_noise(
    update: torch.Tensor, *, std: float, generator: torch.Generator
) -> torch.Tensor:
    """Return pure noise N(0, std^2) of the update's shape in place of the update."""
    if not std > 0:
        raise UsageError(f"noise std must be positive, got {std}")
    noise = torch.randn(update.shape, generator=generator, dtype=torch.float64)
    return (noise * std).to(update.dtype)


def scale_update(update: torch.Tensor, factor: float = 10.0) -> torch.Tensor:
    """Return ``factor * update``: the right direction with an inflated norm."""
    if not factor > 0:
        raise UsageError(f"scaling factor must be positive, got {factor}")
    return factor * update


def model_replacement(target_delta: torch.Tensor, *, boost: float) -> torch.Tensor:
    """Return ``boost * target_delta`` so that averaging moves the model to a target.

    Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020, submit
    gamma * (X - G) for a target model X and global model G. With gamma close to
    the ratio of the total weight to the attackers' weight, a plain weighted mean
    of the updates lands near X - G.
    """
    if not boost > 0:
        raise UsageError(f"model-replacement boost must be positive, got {boost}")
    return boost * target_delta


def flip_labels(labels: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """Map each label y to ``n_classes - 1 - y`` (for digits: 0 <-> 9, 1 <-> 8, ...)."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise UsageError(f"labels must be in 0..{n_classes - 1}")
    return (n_classes - 1) - labels


def sybil_copies(update: torch.Tensor, n_copies: int) -> torch.Tensor:
    """Return ``n_copies`` identical rows of ``update``, one per Sybil identity."""
    if n_copies < 1:
        raise UsageError(f"n_copies must be at least 1, got {n_copies}")
    return update.unsqueeze(0).repeat(n_copies, *[1] * update.dim())


def inflate_sample_count(count: int, *, claimed: int) -> int:
    """Return the sample count an attacker reports: ``max(count, claimed)``.

    Decoders cap the claim with ``max_sample_count``, so an attacker claims that cap.
    """
    if count < 1 or claimed < 1:
        raise UsageError(f"sample counts must be positive, got {count} and {claimed}")
    return max(count, claimed)
