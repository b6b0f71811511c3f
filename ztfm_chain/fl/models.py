"""Multi-layer perceptrons for the digits task and for size benchmarks.

Every model here is an :class:`MLP`: linear layers with ReLU between them and raw
logits out. Its state dict has the keys ``layers.{i}.weight`` (out x in) and
``layers.{i}.bias``, which :mod:`ztfm_chain.fl.training` relies on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import pairwise

import torch
from torch import nn

from ztfm_chain.exceptions import UsageError

__all__ = [
    "DIGITS_CLASSES",
    "DIGITS_FEATURES",
    "DIGITS_WIDTHS",
    "MLP",
    "DigitsMLP",
    "init_mlp_state",
    "mlp_for_parameter_count",
    "mlp_parameter_count",
    "mlp_widths",
]

# The scikit-learn digits: 8x8 = 64 pixels, 10 classes.
DIGITS_FEATURES = 64
DIGITS_CLASSES = 10
DIGITS_WIDTHS = (DIGITS_FEATURES, 128, DIGITS_CLASSES)

_LAYER_KEY_RE = re.compile(r"layers\.(\d+)\.(weight|bias)")


class MLP(nn.Module):
    """Fully connected network with ReLU between layers.

    ``widths`` lists the layer sizes from input to output, so ``(64, 128, 10)`` is
    one hidden layer of 128 units.
    """

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        _check_widths(widths)
        self.widths = tuple(widths)
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in pairwise(self.widths)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < last:
                x = torch.relu(x)
        return x


class DigitsMLP(MLP):
    """The 64-128-10 MLP for 8x8 digits: 9,610 parameters."""

    def __init__(self) -> None:
        super().__init__(DIGITS_WIDTHS)


def mlp_parameter_count(widths: Sequence[int]) -> int:
    """Return the number of weights and biases of an MLP with these widths."""
    _check_widths(widths)
    return sum(n_in * n_out + n_out for n_in, n_out in pairwise(widths))


def mlp_for_parameter_count(
    target: int,
    *,
    hidden_layers: int = 2,
    n_inputs: int = DIGITS_FEATURES,
    n_outputs: int = DIGITS_CLASSES,
) -> MLP:
    """Build an MLP with equal hidden widths and about ``target`` parameters.

    The hidden width is the one whose parameter count is closest to ``target``, so
    10,000, 100,000 and 1,000,000 give widths 69, 280 and 963 with two hidden layers
    (10,015, 99,690 and 1,000,567 parameters).
    """
    if hidden_layers < 1:
        raise UsageError(f"hidden_layers must be at least 1, got {hidden_layers}")

    def count(width: int) -> int:
        return mlp_parameter_count((n_inputs, *[width] * hidden_layers, n_outputs))

    if target < count(1):
        raise UsageError(
            f"target of {target} parameters is below the smallest such MLP, "
            f"which has {count(1)}"
        )
    low, high = 1, 1
    while count(high) < target:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if count(middle) < target:
            low = middle
        else:
            high = middle
    width = min((low, high), key=lambda w: (abs(count(w) - target), w))
    return MLP((n_inputs, *[width] * hidden_layers, n_outputs))


def init_mlp_state(widths: Sequence[int], *, seed: int) -> dict[str, torch.Tensor]:
    """Return the PyTorch default initial state of an MLP, reproducible by seed.

    The global random state of torch is left unchanged.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLP(widths)
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def mlp_widths(state: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """Recover the layer widths from an MLP state dict; raise UsageError otherwise."""
    n_layers = len(state) // 2
    expected = {
        f"layers.{i}.{kind}" for i in range(n_layers) for kind in ("weight", "bias")
    }
    if n_layers == 0 or set(state) != expected:
        unexpected = sorted(key for key in state if not _LAYER_KEY_RE.fullmatch(key))
        raise UsageError(
            "state is not an MLP state dict with keys layers.{i}.weight and "
            f"layers.{{i}}.bias; unexpected keys: {unexpected}"
        )
    widths = [int(state["layers.0.weight"].shape[1])]
    for i in range(n_layers):
        weight = state[f"layers.{i}.weight"]
        bias = state[f"layers.{i}.bias"]
        if (
            weight.dim() != 2
            or weight.shape[1] != widths[-1]
            or tuple(bias.shape) != (weight.shape[0],)
        ):
            raise UsageError(
                f"layer {i} has weight {list(weight.shape)} and bias "
                f"{list(bias.shape)}, which do not chain after width {widths[-1]}"
            )
        widths.append(int(weight.shape[0]))
    return tuple(widths)


def _check_widths(widths: Sequence[int]) -> None:
    if len(widths) < 2 or any(
        isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths
    ):
        raise UsageError(
            f"widths must list at least two positive ints, got {list(widths)!r}"
        )
