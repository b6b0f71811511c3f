"""Strict parser for the safetensors header, run before safetensors parses the bytes.

A safetensors file is an 8-byte little-endian header length N, N bytes of UTF-8 JSON,
then the data section. The JSON maps each tensor name to its dtype, shape and
``data_offsets`` (begin and end, relative to the data section), and may contain a
``__metadata__`` map of strings. This parser rejects anything that safetensors would
accept loosely or that a second parser could read differently: duplicate JSON keys,
NaN literals, unknown fields, gaps, overlaps and trailing bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ztfm_chain.exceptions import MalformedUpdate
from ztfm_chain.updates.schema import DTYPE_CODES

__all__ = ["HEADER_LENGTH_BYTES", "MAX_HEADER_BYTES", "ParsedHeader", "parse_header"]

HEADER_LENGTH_BYTES = 8

# The safetensors 0.8.0 reader rejects headers above 100,000,000 bytes. This parser
# uses the same bound, and a header can never be longer than the bytes after the
# length prefix anyway.
MAX_HEADER_BYTES = 100_000_000

_TENSOR_FIELDS = frozenset({"dtype", "shape", "data_offsets"})

# A valid header nests three levels deep: the root object, a tensor entry or
# __metadata__, and a shape or data_offsets list. The depth is checked before
# json.loads because its C parser recurses once per level. Some libraries raise
# Python's recursion limit (py_ecc 8.0.0, which eth-account imports, sets 100,000),
# and then a header of a few hundred thousand brackets overflows the C stack and
# kills the process instead of raising RecursionError.
_MAX_JSON_DEPTH = 3


@dataclass(frozen=True)
class ParsedHeader:
    """A validated safetensors header.

    ``tensors`` maps each name to its (shape, dtype code), in data-offset order.
    ``metadata`` is the raw ``__metadata__`` value, or None when the key is absent,
    and is type-checked by the caller.
    """

    tensors: Mapping[str, tuple[tuple[int, ...], str]]
    metadata: object
    header_length: int


def parse_header(data: bytes) -> ParsedHeader:
    """Parse and validate the header of a safetensors file.

    Raises MalformedUpdate naming the problem and the offending value when the length
    prefix, the JSON or any tensor entry is invalid, or when the tensors do not tile
    the data section exactly (in range, contiguous, non-overlapping, no extra bytes).
    """
    if len(data) < HEADER_LENGTH_BYTES:
        raise MalformedUpdate(
            f"update is {len(data)} bytes, shorter than the "
            f"{HEADER_LENGTH_BYTES}-byte safetensors header length"
        )
    header_length = int.from_bytes(data[:HEADER_LENGTH_BYTES], "little")
    available = len(data) - HEADER_LENGTH_BYTES
    if header_length < 2:
        raise MalformedUpdate(
            f"header length {header_length} is too small for a JSON object"
        )
    if header_length > MAX_HEADER_BYTES:
        raise MalformedUpdate(
            f"header length {header_length} exceeds the maximum of "
            f"{MAX_HEADER_BYTES} bytes"
        )
    if header_length > available:
        raise MalformedUpdate(
            f"header length {header_length} runs past the end of the update, "
            f"which has {available} bytes after the length prefix"
        )
    document = _parse_json(
        data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + header_length]
    )
    metadata = document.pop("__metadata__", None)
    data_length = available - header_length
    entries = [_parse_entry(name, value) for name, value in document.items()]
    _check_layout(entries, data_length)
    ordered = sorted(entries, key=lambda entry: (entry.begin, entry.end, entry.name))
    return ParsedHeader(
        tensors={entry.name: (entry.shape, entry.dtype) for entry in ordered},
        metadata=metadata,
        header_length=header_length,
    )


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedUpdate(f"header is not valid UTF-8: {exc}") from None
    if not text.startswith("{"):
        raise MalformedUpdate(f"header does not start with '{{': {text[:16]!r}")
    _check_depth(text)
    try:
        document = json.loads(
            text,
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except RecursionError:
        raise MalformedUpdate("header JSON is nested too deeply") from None
    except ValueError as exc:
        raise MalformedUpdate(f"header is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MalformedUpdate("header JSON is not an object")
    return document


def _check_depth(text: str) -> None:
    # One pass over the characters, skipping string contents and their escapes, so
    # the check is linear in the header size whatever the header contains.
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > _MAX_JSON_DEPTH:
                raise MalformedUpdate(
                    f"header JSON is nested deeper than {_MAX_JSON_DEPTH} levels"
                )
        elif char in "]}":
            depth -= 1


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # Different JSON parsers keep the first or the last duplicate, so a
            # duplicate could make two readers see different tensors.
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(token: str) -> Any:
    raise ValueError(f"non-standard JSON constant {token}")


def _parse_entry(name: str, value: object) -> _Entry:
    if not name:
        raise MalformedUpdate("header contains a tensor with an empty name")
    if not isinstance(value, dict):
        raise MalformedUpdate(f"header entry for tensor {name!r} is not an object")
    if set(value) != _TENSOR_FIELDS:
        raise MalformedUpdate(
            f"header entry for tensor {name!r} has keys {sorted(value)}, expected "
            f"exactly {sorted(_TENSOR_FIELDS)}"
        )

    dtype = value["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_CODES:
        raise MalformedUpdate(f"tensor {name!r} has unknown dtype {dtype!r}")
    shape = value["shape"]
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise MalformedUpdate(
            f"tensor {name!r} has invalid shape {shape!r}; expected a list of "
            "non-negative integers"
        )
    offsets = value["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(offset) for offset in offsets)
    ):
        raise MalformedUpdate(
            f"tensor {name!r} has invalid data_offsets {offsets!r}; expected "
            "[begin, end] as non-negative integers"
        )

    begin, end = offsets
    if end < begin:
        raise MalformedUpdate(
            f"tensor {name!r} has data_offsets {offsets!r} with end before begin"
        )
    expected = math.prod(shape) * DTYPE_CODES[dtype].itemsize
    if end - begin != expected:
        raise MalformedUpdate(
            f"tensor {name!r} has data_offsets {offsets!r} spanning {end - begin} "
            f"bytes, but shape {shape} of {dtype} needs {expected} bytes"
        )
    return _Entry(name, dtype, tuple(shape), begin, end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(entries: list[_Entry], data_length: int) -> None:
    position = 0
    for entry in sorted(entries, key=lambda item: (item.begin, item.end)):
        if entry.end > data_length:
            raise MalformedUpdate(
                f"tensor {entry.name!r} has data_offsets [{entry.begin}, {entry.end}] "
                f"out of range: the data section has {data_length} bytes"
            )
        if entry.begin < position:
            raise MalformedUpdate(
                f"tensor {entry.name!r} has data_offsets [{entry.begin}, {entry.end}] "
                f"overlapping the previous tensor, which ends at {position}"
            )
        if entry.begin > position:
            raise MalformedUpdate(
                f"tensor {entry.name!r} starts at offset {entry.begin}, leaving a gap "
                f"of unused bytes after offset {position}"
            )
        position = entry.end
    if position != data_length:
        raise MalformedUpdate(
            f"data section has {data_length - position} extra bytes after the last "
            f"tensor, which ends at offset {position}"
        )
