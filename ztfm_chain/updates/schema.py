"""Model schemas: the ordered tensor names, shapes and dtypes that an update must have.

Dtypes are written as safetensors dtype codes (``"F32"``, ``"I64"``, ...), so a schema
compares directly with a safetensors header. The schema order is the order of the
model's state dict and fixes the layout of :meth:`ModelSchema.flatten`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ztfm_chain.exceptions import UsageError

__all__ = [
    "DTYPE_CODES",
    "SCHEMA_FORMAT_VERSION",
    "ModelSchema",
    "TensorSpec",
    "dtype_code",
]

# Safetensors dtype code -> torch dtype, for the dtypes that updates may use. Other
# codes (unsigned 16 to 64 bit, the 8-bit float formats) are rejected as unknown.
DTYPE_CODES: Mapping[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}

SCHEMA_FORMAT_VERSION = 1

_CODES_BY_DTYPE: dict[torch.dtype, str] = {dt: code for code, dt in DTYPE_CODES.items()}


class TensorSpec(NamedTuple):
    """Shape and safetensors dtype code of one tensor."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        """Number of elements in a tensor of this shape."""
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype that the dtype code stands for."""
        return DTYPE_CODES[self.dtype]

    @property
    def nbytes(self) -> int:
        """Size in bytes of the tensor's data."""
        return self.numel * self.torch_dtype.itemsize


def dtype_code(dtype: torch.dtype) -> str:
    """Return the safetensors code of a torch dtype, or raise UsageError."""
    try:
        return _CODES_BY_DTYPE[dtype]
    except KeyError:
        supported = ", ".join(str(dt) for dt in _CODES_BY_DTYPE)
        raise UsageError(
            f"unsupported tensor dtype {dtype}; supported dtypes: {supported}"
        ) from None


class ModelSchema(Mapping[str, TensorSpec]):
    """Ordered mapping from tensor name to :class:`TensorSpec`.

    Build one with :meth:`from_module`, :meth:`from_state_dict`, :meth:`from_json` or
    the constructor, which takes a mapping of name -> (shape, dtype) where dtype is a
    safetensors code or a torch dtype. Two schemas are equal when their entries and
    order are equal.
    """

    def __init__(
        self, entries: Mapping[str, tuple[Sequence[int], str | torch.dtype]]
    ) -> None:
        specs: dict[str, TensorSpec] = {}
        for name, entry in entries.items():
            _check_name(name)
            if not isinstance(entry, tuple | list) or len(entry) != 2:
                raise UsageError(
                    f"schema entry for {name!r} must be a (shape, dtype) pair, "
                    f"got {entry!r}"
                )
            shape, dtype = entry
            specs[name] = TensorSpec(_check_shape(name, shape), _check_dtype(dtype))
        if not specs:
            raise UsageError("a model schema needs at least one tensor")
        self._specs = specs

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, torch.Tensor]) -> ModelSchema:
        """Build the schema of a state dict, keeping its order."""
        return cls({name: (tuple(t.shape), t.dtype) for name, t in tensors.items()})

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> ModelSchema:
        """Build the schema of a module's state dict."""
        return cls.from_state_dict(module.state_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelSchema:
        """Parse a schema written by :meth:`to_json`; raise UsageError if invalid."""
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"model schema is not valid JSON: {exc}") from None
        if not isinstance(document, dict) or set(document) != {
            "format_version",
            "tensors",
        }:
            raise UsageError(
                "model schema JSON must be an object with exactly the keys "
                "'format_version' and 'tensors'"
            )
        if document["format_version"] != SCHEMA_FORMAT_VERSION:
            raise UsageError(
                f"unsupported model schema format_version "
                f"{document['format_version']!r}; expected {SCHEMA_FORMAT_VERSION}"
            )
        tensors = document["tensors"]
        if not isinstance(tensors, list):
            raise UsageError("model schema 'tensors' must be a list")
        entries: dict[str, tuple[Sequence[int], str | torch.dtype]] = {}
        for item in tensors:
            if not isinstance(item, dict) or set(item) != {"name", "shape", "dtype"}:
                raise UsageError(
                    "each model schema tensor must be an object with exactly the "
                    f"keys 'name', 'shape' and 'dtype', got {item!r}"
                )
            name = item["name"]
            if not isinstance(name, str):
                raise UsageError(f"model schema tensor name must be a string: {name!r}")
            if name in entries:
                raise UsageError(f"model schema lists tensor {name!r} twice")
            entries[name] = (item["shape"], item["dtype"])
        return cls(entries)

    def to_json(self) -> str:
        """Serialise to canonical JSON: sorted keys, no whitespace, schema order."""
        document: dict[str, Any] = {
            "format_version": SCHEMA_FORMAT_VERSION,
            "tensors": [
                {"name": name, "shape": list(spec.shape), "dtype": spec.dtype}
                for name, spec in self._specs.items()
            ],
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    def schema_hash(self) -> str:
        """Return ``0x`` + SHA-256 hex of :meth:`to_json` encoded as UTF-8."""
        return "0x" + hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @property
    def numel(self) -> int:
        """Total number of elements over all tensors."""
        return sum(spec.numel for spec in self._specs.values())

    def check_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Raise UsageError unless the tensors match the schema exactly."""
        difference = self.first_difference(
            {name: (tuple(t.shape), dtype_code(t.dtype)) for name, t in tensors.items()}
        )
        if difference is not None:
            raise UsageError(f"tensors do not match the model schema: {difference}")

    def first_difference(
        self, entries: Mapping[str, tuple[tuple[int, ...], str]]
    ) -> str | None:
        """Describe the first way ``entries`` differ from the schema, or return None.

        Missing names are reported first in schema order, then unexpected names in
        sorted order, then dtype and shape differences in schema order.
        """
        for name in self._specs:
            if name not in entries:
                return f"missing tensor {name!r}"
        for name in sorted(entries):
            if name not in self._specs:
                return f"unexpected tensor {name!r}"
        for name, spec in self._specs.items():
            shape, dtype = entries[name]
            if dtype != spec.dtype:
                return f"tensor {name!r} has dtype {dtype}, expected {spec.dtype}"
            if tuple(shape) != spec.shape:
                return (
                    f"tensor {name!r} has shape {list(shape)}, "
                    f"expected {list(spec.shape)}"
                )
        return None

    def flatten(
        self, tensors: Mapping[str, torch.Tensor], out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Concatenate the tensors in schema order into one float32 vector.

        With ``out``, a float32 vector of :attr:`numel` elements such as a row of a
        preallocated matrix, the values are written there and ``out`` is returned.
        Raises UsageError unless the tensors match the schema and every dtype in the
        schema is a floating-point dtype.
        """
        self._require_floating()
        self.check_tensors(tensors)
        if out is not None and (
            out.dtype != torch.float32 or tuple(out.shape) != (self.numel,)
        ):
            raise UsageError(
                f"out must be a float32 vector of {self.numel} elements, got "
                f"{out.dtype} of shape {list(out.shape)}"
            )
        parts = [
            tensors[name].detach().to("cpu", torch.float32).reshape(-1)
            for name in self._specs
        ]
        if out is None:
            return torch.cat(parts)
        return torch.cat(parts, out=out)

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a vector made by :meth:`flatten` back into tensors of schema dtype."""
        self._require_floating()
        if vector.dim() != 1 or vector.numel() != self.numel:
            raise UsageError(
                f"vector of shape {list(vector.shape)} does not match the model "
                f"schema, which needs a 1-D vector of {self.numel} elements"
            )
        result: dict[str, torch.Tensor] = {}
        start = 0
        for name, spec in self._specs.items():
            end = start + spec.numel
            piece = vector[start:end].reshape(spec.shape)
            result[name] = piece.to(spec.torch_dtype).clone()
            start = end
        return result

    def __getitem__(self, name: str) -> TensorSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelSchema):
            return NotImplemented
        return list(self._specs.items()) == list(other._specs.items())

    def __hash__(self) -> int:
        return hash(tuple(self._specs.items()))

    def __repr__(self) -> str:
        return f"ModelSchema({len(self)} tensors, {self.numel} elements)"

    def _require_floating(self) -> None:
        for name, spec in self._specs.items():
            if not spec.torch_dtype.is_floating_point:
                raise UsageError(
                    f"cannot flatten: tensor {name!r} has non-float dtype {spec.dtype}"
                )


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise UsageError(f"tensor name must be a non-empty string, got {name!r}")
    if name == "__metadata__":
        raise UsageError("'__metadata__' is reserved by safetensors")


def _check_shape(name: str, shape: object) -> tuple[int, ...]:
    if not isinstance(shape, Iterable) or isinstance(shape, str | bytes):
        raise UsageError(f"shape of {name!r} must be a sequence of ints: {shape!r}")
    dims = tuple(shape)
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise UsageError(
                f"shape of {name!r} must contain non-negative ints: {list(dims)!r}"
            )
    return dims


def _check_dtype(dtype: object) -> str:
    if isinstance(dtype, torch.dtype):
        return dtype_code(dtype)
    if isinstance(dtype, str) and dtype in DTYPE_CODES:
        return dtype
    raise UsageError(
        f"unknown dtype {dtype!r}; expected a torch dtype or one of "
        f"{', '.join(DTYPE_CODES)}"
    )
