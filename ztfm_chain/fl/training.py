"""Local training and evaluation of MLP state dicts (see :mod:`ztfm_chain.fl.models`).

Training is plain mini-batch SGD on the mean cross-entropy of each batch. Each epoch
visits the samples in the order of ``torch.randperm`` drawn from a generator seeded
with ``seed``, and the last batch of an epoch may be smaller. :func:`train_local` and
:func:`train_local_many` follow the same steps, so a device's result from either
agrees up to float rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias for torch.nn.functional

from ztfm_chain.exceptions import UsageError
from ztfm_chain.fl.models import mlp_widths

__all__ = ["LocalResult", "evaluate", "predict", "train_local", "train_local_many"]


@dataclass(frozen=True)
class LocalResult:
    """Result of local training: the new state and ``new_state - model_state``."""

    state: dict[str, torch.Tensor]
    delta: dict[str, torch.Tensor]


def train_local(
    model_state: Mapping[str, torch.Tensor],
    data: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 2,
    batch_size: int = 16,
    lr: float = 0.1,
    seed: int,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train an MLP state with SGD and return ``(new_state, delta)``.

    The result depends only on the arguments: the same inputs and seed give the
    same tensors. ``model_state`` is not modified.
    """
    _check_hyperparameters(epochs, batch_size, lr)
    widths = mlp_widths(model_state)
    _check_data(data, labels, widths)
    model_state = _in_layer_order(model_state)
    data = data.to(torch.float32)
    params = [
        t.detach().to(torch.float32).clone().requires_grad_(True)
        for t in model_state.values()
    ]
    generator = torch.Generator().manual_seed(seed)
    n_samples = len(labels)
    for _ in range(epochs):
        order = torch.randperm(n_samples, generator=generator)
        for start in range(0, n_samples, batch_size):
            batch = order[start : start + batch_size]
            logits = _forward(params, data[batch])
            loss = F.cross_entropy(logits, labels[batch])
            grads = torch.autograd.grad(loss, params)
            _sgd_step(params, grads, lr)
    result = _result(model_state, params)
    return result.state, result.delta


def train_local_many(
    model_state: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
    datasets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int = 2,
    batch_size: int = 16,
    lr: float = 0.1,
    seeds: Sequence[int],
) -> list[LocalResult]:
    """Train one model per (data, labels) pair, all at once.

    ``model_state`` is either one state that every dataset starts from, or one
    state per dataset, all of the same architecture. Equivalent to calling
    :func:`train_local` for each dataset with the matching start state and seed,
    but runs the steps of all datasets as batched matrix products. A dataset that
    runs out of batches before the others leaves its model unchanged.
    """
    _check_hyperparameters(epochs, batch_size, lr)
    if not datasets:
        raise UsageError("train_local_many needs at least one dataset")
    if len(seeds) != len(datasets):
        raise UsageError(f"got {len(seeds)} seeds for {len(datasets)} datasets")
    starts = [
        _in_layer_order(start) for start in _start_states(model_state, len(datasets))
    ]
    widths = mlp_widths(starts[0])
    for data, labels in datasets:
        _check_data(data, labels, widths)

    n_devices = len(datasets)
    sizes = [len(labels) for _, labels in datasets]
    max_size = max(sizes)
    padded_x = torch.zeros(n_devices, max_size, widths[0])
    padded_y = torch.zeros(n_devices, max_size, dtype=torch.int64)
    for device, (data, labels) in enumerate(datasets):
        padded_x[device, : sizes[device]] = data
        padded_y[device, : sizes[device]] = labels

    params = [
        torch.stack([start[name].detach().to(torch.float32) for start in starts])
        .contiguous()
        .requires_grad_(True)
        for name in starts[0]
    ]
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    rows = torch.arange(n_devices).unsqueeze(1)
    for _ in range(epochs):
        indices, mask = _batch_plan(sizes, batch_size, generators)
        for step in range(indices.shape[1]):
            step_indices = indices[:, step]
            step_mask = mask[:, step]
            x = padded_x[rows, step_indices]
            y = padded_y[rows, step_indices]
            logits = _forward_batched(params, x)
            losses = F.cross_entropy(
                logits.reshape(-1, widths[-1]), y.reshape(-1), reduction="none"
            ).reshape(n_devices, batch_size)
            counts = step_mask.sum(dim=1).clamp(min=1)
            # Each device's loss is the mean over its own batch; summing the devices'
            # losses keeps their gradients separate because they share no parameter.
            total = ((losses * step_mask).sum(dim=1) / counts).sum()
            grads = torch.autograd.grad(total, params)
            _sgd_step(params, grads, lr)
    results = []
    for device in range(n_devices):
        results.append(_result(starts[device], [p[device] for p in params]))
    return results


def predict(state: Mapping[str, torch.Tensor], data: torch.Tensor) -> torch.Tensor:
    """Return the logits of an MLP state for each row of ``data``."""
    widths = mlp_widths(state)
    params = [t.detach().to(torch.float32) for t in _in_layer_order(state).values()]
    if data.dim() != 2 or data.shape[1] != widths[0]:
        raise UsageError(
            f"data must have shape [n, {widths[0]}], got {list(data.shape)}"
        )
    with torch.no_grad():
        return _forward(params, data.to(torch.float32))


def evaluate(
    state: Mapping[str, torch.Tensor], data: torch.Tensor, labels: torch.Tensor
) -> float:
    """Return the fraction of rows whose arg-max logit equals the label.

    A row whose logits contain NaN or infinity counts as wrong, so a diverged model
    scores 0 instead of whatever ``argmax`` makes of NaN.
    """
    if len(labels) == 0:
        raise UsageError("cannot evaluate on an empty data set")
    logits = predict(state, data)
    finite = torch.isfinite(logits).all(dim=1)
    correct = (logits.argmax(dim=1) == labels) & finite
    return float(correct.float().mean())


def _start_states(
    model_state: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
    n_datasets: int,
) -> list[Mapping[str, torch.Tensor]]:
    if isinstance(model_state, Mapping):
        return [model_state] * n_datasets
    starts = list(model_state)
    if len(starts) != n_datasets:
        raise UsageError(f"got {len(starts)} start states for {n_datasets} datasets")
    widths = mlp_widths(starts[0])
    names = list(starts[0])
    for start in starts[1:]:
        if list(start) != names or mlp_widths(start) != widths:
            raise UsageError("all start states must have the same MLP architecture")
    return starts


def _sgd_step(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], lr: float
) -> None:
    with torch.no_grad():
        for param, grad in zip(params, grads, strict=True):
            param.sub_(grad, alpha=lr)


def _forward(params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    n_layers = len(params) // 2
    for layer in range(n_layers):
        x = F.linear(x, params[2 * layer], params[2 * layer + 1])
        if layer < n_layers - 1:
            x = torch.relu(x)
    return x


def _forward_batched(params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    n_layers = len(params) // 2
    for layer in range(n_layers):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        if layer < n_layers - 1:
            x = torch.relu(x)
    return x


def _batch_plan(
    sizes: Sequence[int], batch_size: int, generators: Sequence[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return per-device sample indices and a validity mask for one epoch.

    Both have shape (devices, steps, batch_size). Slots past a device's data point
    at sample 0 and have mask 0.
    """
    steps = max(-(-size // batch_size) for size in sizes)
    indices = torch.zeros(len(sizes), steps * batch_size, dtype=torch.int64)
    mask = torch.zeros(len(sizes), steps * batch_size)
    for device, (size, generator) in enumerate(zip(sizes, generators, strict=True)):
        indices[device, :size] = torch.randperm(size, generator=generator)
        mask[device, :size] = 1.0
    shape = (len(sizes), steps, batch_size)
    return indices.reshape(shape), mask.reshape(shape)


def _in_layer_order(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The forward pass takes parameters as weight, bias of layer 0, then layer 1, and
    # so on; a decoded safetensors file lists them sorted by name instead.
    n_layers = len(state) // 2
    return {
        f"layers.{i}.{kind}": state[f"layers.{i}.{kind}"]
        for i in range(n_layers)
        for kind in ("weight", "bias")
    }


def _result(
    model_state: Mapping[str, torch.Tensor], params: Sequence[torch.Tensor]
) -> LocalResult:
    state: dict[str, torch.Tensor] = {}
    delta: dict[str, torch.Tensor] = {}
    for (name, old), new in zip(model_state.items(), params, strict=True):
        new_value = new.detach().to(old.dtype).clone()
        state[name] = new_value
        delta[name] = new_value - old.detach()
    return LocalResult(state=state, delta=delta)


def _check_hyperparameters(epochs: int, batch_size: int, lr: float) -> None:
    if epochs < 1:
        raise UsageError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    if not lr > 0:
        raise UsageError(f"lr must be positive, got {lr}")


def _check_data(
    data: torch.Tensor, labels: torch.Tensor, widths: Sequence[int]
) -> None:
    if data.dim() != 2 or data.shape[1] != widths[0]:
        raise UsageError(
            f"data must have shape [n, {widths[0]}], got {list(data.shape)}"
        )
    if labels.shape != (data.shape[0],):
        raise UsageError(
            f"labels must have shape [{data.shape[0]}], got {list(labels.shape)}"
        )
    if len(labels) == 0:
        raise UsageError("cannot train on an empty data set")
    if labels.dtype != torch.int64:
        raise UsageError(f"labels must be int64, got {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= widths[-1]:
        raise UsageError(
            f"labels must be in 0..{widths[-1] - 1}, got "
            f"{int(labels.min())}..{int(labels.max())}"
        )
