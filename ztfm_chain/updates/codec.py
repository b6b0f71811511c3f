"""Encode and decode model updates and global models as safetensors bytes.

Only ``safetensors`` reads or writes tensor data here; nothing is ever unpickled.
The encoding is canonical, so equal tensors and metadata always give equal bytes and
therefore equal SHA-256 hashes. ``docs/update-format.md`` describes the layout.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import safetensors
import safetensors.torch
import torch

from ztfm_chain.exceptions import (
    BadSampleCount,
    MalformedUpdate,
    NonFiniteValues,
    SchemaMismatch,
    UpdateTooLarge,
    UsageError,
)
from ztfm_chain.updates.header import HEADER_LENGTH_BYTES, ParsedHeader, parse_header
from ztfm_chain.updates.schema import ModelSchema, dtype_code

__all__ = [
    "FORMAT_VERSION",
    "MODEL_METADATA_KEYS",
    "UPDATE_METADATA_KEYS",
    "DecodedUpdate",
    "UpdateKind",
    "UpdateMeta",
    "decode_model",
    "decode_update",
    "encode_model",
    "encode_update",
    "sha256_hex",
    "state_dict_hash",
]

FORMAT_VERSION = "1"

UpdateKind = Literal["delta", "weights"]

UPDATE_METADATA_KEYS = frozenset(
    {"format_version", "model_id", "round", "base_model_hash", "sample_count", "kind"}
)
MODEL_METADATA_KEYS = frozenset({"format_version", "kind"})

# Integers in metadata are canonical decimal strings of at most 78 digits, which is
# enough for any uint256 and keeps int() far below Python's digit limit.
_UNSIGNED_RE = re.compile(r"0|[1-9][0-9]{0,77}")
_SIGNED_RE = re.compile(r"-?(0|[1-9][0-9]{0,77})")
_HASH_RE = re.compile(r"0x[0-9a-f]{64}")
_UINT256_LIMIT = 2**256


@dataclass(frozen=True)
class UpdateMeta:
    """Metadata of one model update.

    ``base_model_hash`` is the :func:`state_dict_hash` of the global model that the
    update was computed from, as ``0x`` + 64 lowercase hex digits. ``kind`` is
    ``"delta"`` for new weights minus base weights, ``"weights"`` for new weights.
    Construction raises UsageError on an invalid value.
    """

    model_id: int
    round: int
    base_model_hash: str
    sample_count: int
    kind: UpdateKind

    def __post_init__(self) -> None:
        for field in ("model_id", "round"):
            _require_uint256(field, getattr(self, field))
        if not isinstance(self.base_model_hash, str) or not _HASH_RE.fullmatch(
            self.base_model_hash
        ):
            raise UsageError(
                "base_model_hash must be '0x' followed by 64 lowercase hex digits, "
                f"got {self.base_model_hash!r}"
            )
        _require_uint256("sample_count", self.sample_count)
        if self.sample_count < 1:
            raise UsageError(f"sample_count must be positive, got {self.sample_count}")
        if self.kind not in ("delta", "weights"):
            raise UsageError(f"kind must be 'delta' or 'weights', got {self.kind!r}")

    def to_metadata(self) -> dict[str, str]:
        """Return the safetensors ``__metadata__`` map for this update."""
        return {
            "format_version": FORMAT_VERSION,
            "model_id": str(self.model_id),
            "round": str(self.round),
            "base_model_hash": self.base_model_hash,
            "sample_count": str(self.sample_count),
            "kind": self.kind,
        }


@dataclass(frozen=True)
class DecodedUpdate:
    """An update that passed every check of :func:`decode_update`.

    ``tensors`` follow the schema order. ``sha256`` is :func:`sha256_hex` of the
    bytes that were decoded.
    """

    meta: UpdateMeta
    tensors: dict[str, torch.Tensor]
    sha256: str


def encode_update(tensors: Mapping[str, torch.Tensor], meta: UpdateMeta) -> bytes:
    """Encode an update as canonical safetensors bytes.

    Raises UsageError for an empty mapping, a reserved or empty name, an unsupported
    dtype, a sparse tensor or a NaN or infinity in a floating-point tensor.
    """
    return _encode(tensors, meta.to_metadata())


def decode_update(
    data: bytes, schema: ModelSchema, *, max_size: int, max_sample_count: int
) -> DecodedUpdate:
    """Validate and decode update bytes received from a device.

    The checks run in this order, each raising the named UpdateError subclass:

    1. ``len(data) > max_size``: UpdateTooLarge, before any parsing.
    2. The header: MalformedUpdate (see :func:`parse_header`).
    3. The metadata keys and value formats: MalformedUpdate.
    4. Tensor names, dtypes and shapes against ``schema``: SchemaMismatch.
    5. NaN or infinity in any floating-point tensor: NonFiniteValues.
    6. ``sample_count`` outside 1..max_sample_count: BadSampleCount.
    """
    _require_positive("max_size", max_size)
    _require_positive("max_sample_count", max_sample_count)
    data = _check_size(data, max_size)
    header = parse_header(data)
    metadata = _check_metadata(header, UPDATE_METADATA_KEYS)
    fields = _parse_update_metadata(metadata)
    tensors = _load_tensors(data, header, schema)
    sample_count = fields.sample_count
    if sample_count < 1 or sample_count > max_sample_count:
        raise BadSampleCount(
            f"sample_count {sample_count} is outside the allowed range "
            f"1..{max_sample_count}"
        )
    meta = UpdateMeta(
        model_id=fields.model_id,
        round=fields.round,
        base_model_hash=fields.base_model_hash,
        sample_count=sample_count,
        kind=fields.kind,
    )
    return DecodedUpdate(meta=meta, tensors=tensors, sha256=sha256_hex(data))


def encode_model(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """Encode global model weights as canonical safetensors bytes with kind weights.

    The metadata contains only the format version and the kind, so the bytes, and
    :func:`state_dict_hash`, depend on the tensors alone.
    """
    return _encode(tensors, {"format_version": FORMAT_VERSION, "kind": "weights"})


def decode_model(
    data: bytes, schema: ModelSchema, *, max_size: int
) -> dict[str, torch.Tensor]:
    """Validate and decode global model bytes made by :func:`encode_model`.

    Runs checks 1 to 5 of :func:`decode_update`, with the model's metadata keys.
    """
    _require_positive("max_size", max_size)
    data = _check_size(data, max_size)
    header = parse_header(data)
    metadata = _check_metadata(header, MODEL_METADATA_KEYS)
    if metadata["kind"] != "weights":
        raise MalformedUpdate(
            f"metadata kind of a global model must be 'weights', "
            f"got {metadata['kind']!r}"
        )
    return _load_tensors(data, header, schema)


def sha256_hex(data: bytes) -> str:
    """Return ``0x`` + the lowercase hex SHA-256 of ``data``."""
    return "0x" + hashlib.sha256(data).hexdigest()


def state_dict_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """Return the SHA-256 of :func:`encode_model` of the tensors, as ``0x`` hex."""
    return sha256_hex(encode_model(tensors))


def _encode(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    if not tensors:
        raise UsageError("cannot encode an empty set of tensors")
    prepared: dict[str, torch.Tensor] = {}
    for name in sorted(tensors):
        prepared[name] = _prepare_tensor(name, tensors[name])
    raw = safetensors.torch.save(prepared, metadata=metadata)
    return _canonical_header(raw)


def _prepare_tensor(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if not isinstance(name, str) or not name or name == "__metadata__":
        raise UsageError(f"invalid tensor name {name!r}")
    if not isinstance(tensor, torch.Tensor):
        raise UsageError(
            f"value of {name!r} is a {type(tensor).__name__}, not a tensor"
        )
    if tensor.layout != torch.strided:
        raise UsageError(f"tensor {name!r} has layout {tensor.layout}; expected dense")
    dtype_code(tensor.dtype)
    if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
        raise UsageError(f"tensor {name!r} contains NaN or infinity")
    # A fresh contiguous CPU copy: safetensors rejects non-contiguous tensors and
    # tensors that share storage (tied weights).
    return tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def _canonical_header(raw: bytes) -> bytes:
    """Rewrite the header of ``raw`` in canonical key order.

    safetensors 0.8.0 writes ``__metadata__`` from a hash map, so its key order,
    and with it the bytes, change from call to call. The data section is already
    deterministic because safetensors orders tensors by dtype, then name.
    """
    header_length = int.from_bytes(raw[:HEADER_LENGTH_BYTES], "little")
    data_start = HEADER_LENGTH_BYTES + header_length
    document = json.loads(raw[HEADER_LENGTH_BYTES:data_start])
    metadata = document.pop("__metadata__")
    ordered: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    for name in sorted(document, key=lambda key: (document[key]["data_offsets"], key)):
        entry = document[name]
        ordered[name] = {
            "dtype": entry["dtype"],
            "shape": entry["shape"],
            "data_offsets": entry["data_offsets"],
        }
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False)
    header = text.encode("utf-8")
    # Pad with spaces to a multiple of 8 bytes, as safetensors does, so that the data
    # section stays aligned.
    header += b" " * (-len(header) % 8)
    return (
        len(header).to_bytes(HEADER_LENGTH_BYTES, "little") + header + raw[data_start:]
    )


def _check_size(data: bytes, max_size: int) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UsageError(f"data must be bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise UpdateTooLarge(
            f"update is {len(data)} bytes, above the limit of {max_size} bytes"
        )
    return bytes(data)


def _check_metadata(header: ParsedHeader, expected: frozenset[str]) -> dict[str, str]:
    metadata = header.metadata
    if metadata is None:
        raise MalformedUpdate("header has no __metadata__")
    if not isinstance(metadata, dict):
        raise MalformedUpdate("header __metadata__ is not an object")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise MalformedUpdate(
                f"metadata {key!r} must be a string, got {type(value).__name__}"
            )
    missing = sorted(expected - set(metadata))
    if missing:
        raise MalformedUpdate(f"metadata is missing keys {missing}")
    extra = sorted(set(metadata) - expected)
    if extra:
        raise MalformedUpdate(f"metadata has unexpected keys {extra}")
    if metadata["format_version"] != FORMAT_VERSION:
        raise MalformedUpdate(
            f"unsupported format_version {metadata['format_version']!r}; "
            f"expected {FORMAT_VERSION!r}"
        )
    return metadata


@dataclass(frozen=True)
class _UpdateFields:
    """Metadata values before the sample count is range-checked."""

    model_id: int
    round: int
    base_model_hash: str
    sample_count: int
    kind: UpdateKind


def _parse_update_metadata(metadata: Mapping[str, str]) -> _UpdateFields:
    kind = metadata["kind"]
    if kind not in ("delta", "weights"):
        raise MalformedUpdate(
            f"metadata kind must be 'delta' or 'weights', got {kind!r}"
        )
    model_id = _parse_int(metadata, "model_id", _UNSIGNED_RE)
    round_number = _parse_int(metadata, "round", _UNSIGNED_RE)
    for key, value in (("model_id", model_id), ("round", round_number)):
        if value >= _UINT256_LIMIT:
            raise MalformedUpdate(f"metadata {key} {value} does not fit in uint256")
    base_model_hash = metadata["base_model_hash"]
    if not _HASH_RE.fullmatch(base_model_hash):
        raise MalformedUpdate(
            "metadata base_model_hash must be '0x' followed by 64 lowercase hex "
            f"digits, got {base_model_hash!r}"
        )
    return _UpdateFields(
        model_id=model_id,
        round=round_number,
        base_model_hash=base_model_hash,
        # The range check runs after the tensor checks, in decode_update.
        sample_count=_parse_int(metadata, "sample_count", _SIGNED_RE),
        kind="delta" if kind == "delta" else "weights",
    )


def _parse_int(metadata: Mapping[str, str], key: str, pattern: re.Pattern[str]) -> int:
    text = metadata[key]
    if not pattern.fullmatch(text):
        raise MalformedUpdate(
            f"metadata {key} must be a canonical decimal integer, got {text!r}"
        )
    return int(text)


def _load_tensors(
    data: bytes, header: ParsedHeader, schema: ModelSchema
) -> dict[str, torch.Tensor]:
    difference = schema.first_difference(header.tensors)
    if difference is not None:
        raise SchemaMismatch(f"update does not match the model schema: {difference}")
    try:
        loaded = safetensors.torch.load(data)
    except safetensors.SafetensorError as exc:
        # The header check above should make this unreachable.
        raise MalformedUpdate(f"safetensors rejected the update: {exc}") from None
    tensors: dict[str, torch.Tensor] = {}
    for name in schema:
        # Copy out of the read-only buffer that safetensors returns.
        tensor = loaded[name].clone()
        if tensor.dtype.is_floating_point:
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise NonFiniteValues(
                    f"tensor {name!r} contains {bad} NaN or infinite values"
                )
        tensors[name] = tensor
    return tensors


def _require_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")


def _require_uint256(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0 or value >= _UINT256_LIMIT:
        raise UsageError(f"{name} must be in 0..2**256-1, got {value}")
