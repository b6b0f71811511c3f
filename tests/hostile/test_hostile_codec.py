"""Hostile safetensors bytes fed straight to decode_update, without a chain.

Every case must raise an UpdateError with the documented reason, quickly, and
nothing else.
"""

from __future__ import annotations

import json

import pytest
import torch

from ztfm_chain.exceptions import UpdateError
from ztfm_chain.fl.models import DIGITS_WIDTHS, init_mlp_state
from ztfm_chain.updates import ModelSchema, UpdateMeta, decode_update, encode_update

SCHEMA = ModelSchema.from_state_dict(init_mlp_state(DIGITS_WIDTHS, seed=0))
MAX_SIZE = 4 * 1024 * 1024  # the default max_update_bytes of a model
META = {
    "format_version": "1",
    "model_id": "1",
    "round": "1",
    "base_model_hash": "0x" + "ab" * 32,
    "sample_count": "50",
    "kind": "delta",
}


def frame(header: bytes, data: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "little") + header + data


def frame_json(document: object, data: bytes = b"") -> bytes:
    return frame(json.dumps(document).encode(), data)


def valid() -> bytes:
    tensors = {name: torch.zeros(spec.shape) for name, spec in SCHEMA.items()}
    meta = UpdateMeta(1, 1, "0x" + "ab" * 32, 50, "delta")
    return encode_update(tensors, meta)


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


CASES: dict[str, tuple[bytes, str]] = {
    "declared-length-2**63": ((2**63).to_bytes(8, "little") + b"{}", "MALFORMED"),
    "declared-length-max": (b"\xff" * 8 + b"{}", "MALFORMED"),
    "duplicate-key-escaped": (
        frame(
            b'{"__metadata__":{},"a":'
            + json.dumps(entry("F32", [1], 0, 4)).encode()
            + b',"\\u0061":'
            + json.dumps(entry("F32", [1], 4, 8)).encode()
            + b"}",
            b"\x00" * 8,
        ),
        "MALFORMED",
    ),
    "overlap": (
        frame_json(
            {
                "__metadata__": META,
                "a": entry("F32", [2], 0, 8),
                "b": entry("F32", [2], 4, 12),
            },
            b"\x00" * 12,
        ),
        "MALFORMED",
    ),
    "past-end": (
        frame_json({"__metadata__": META, "a": entry("F32", [4], 0, 16)}, b"\x00" * 8),
        "MALFORMED",
    ),
    "non-utf8": (frame(b'{"\xff\xfe":1}'), "MALFORMED"),
    "lone-surrogate-name": (
        frame(
            b'{"__metadata__":'
            + json.dumps(META).encode()
            + b',"\\ud800":'
            + json.dumps(entry("F32", [1], 0, 4)).encode()
            + b"}",
            b"\x00" * 4,
        ),
        "SCHEMA_MISMATCH",
    ),
    "bool-tensor": (
        frame_json({"__metadata__": META, "a": entry("BOOL", [4], 0, 4)}, b"\x07" * 4),
        "SCHEMA_MISMATCH",
    ),
    "f16-nan": (
        frame_json({"__metadata__": META, "a": entry("F16", [1], 0, 2)}, b"\x00\x7e"),
        "SCHEMA_MISMATCH",
    ),
    "zero-size-huge-dims": (
        frame_json({"__metadata__": META, "a": entry("F32", [0, 2**70], 0, 0)}),
        "SCHEMA_MISMATCH",
    ),
    "shape-10000-digit-int": (
        frame(
            b'{"__metadata__":'
            + json.dumps(META).encode()
            + b',"a":{"dtype":"F32","shape":['
            + b"9" * 10_000
            + b'],"data_offsets":[0,0]}}'
        ),
        "MALFORMED",
    ),
    "many-tensors": (
        frame_json(
            {
                "__metadata__": META,
                **{f"t{i}": entry("F32", [0], 0, 0) for i in range(50_000)},
            }
        ),
        "SCHEMA_MISMATCH",
    ),
    "metadata-unexpected-key": (
        frame_json({"__metadata__": {**META, "x" * 100_000: "y" * 100_000}}),
        "MALFORMED",
    ),
    "metadata-list-value": (
        frame_json({"__metadata__": {**META, "kind": ["delta"]}}),
        "MALFORMED",
    ),
    "metadata-bool-in-shape": (
        frame_json(
            {"__metadata__": META, "a": entry("F32", [True], 0, 4)}, b"\x00" * 4
        ),
        "MALFORMED",
    ),
    "sample-count-negative": (
        valid().replace(b'"sample_count":"50"', b'"sample_count":"-5"'),
        "BAD_SAMPLE_COUNT",
    ),
    # An unterminated string of escaped quotes: a depth check that backtracks from
    # every quote is quadratic and would need hours for this 2 MB header.
    "escaped-quotes-2m": (frame(b'{"' + b'\\"' * 1_000_000), "MALFORMED"),
}


# The timeout is a hang guard for the quadratic cases, not a speed target.
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_bytes_rejected(name: str) -> None:
    data, reason = CASES[name]
    with pytest.raises(UpdateError) as caught:
        decode_update(data, SCHEMA, max_size=MAX_SIZE, max_sample_count=1000)
    assert caught.value.reason == reason, str(caught.value)[:200]
