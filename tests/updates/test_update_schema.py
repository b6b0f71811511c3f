"""Tests of ModelSchema: construction, JSON, hashing and flattening."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from ztfm_chain.exceptions import UsageError
from ztfm_chain.updates import ModelSchema, TensorSpec


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))


def test_schema_from_module_keeps_state_dict_order() -> None:
    schema = ModelSchema.from_module(TwoLayer())

    # A module's own buffers come before its children's parameters.
    assert list(schema) == [
        "steps",
        "hidden.weight",
        "hidden.bias",
        "out.weight",
        "out.bias",
    ]
    assert schema["hidden.weight"] == TensorSpec((4, 3), "F32")
    assert schema["steps"] == TensorSpec((), "I64")
    assert schema.numel == 12 + 4 + 8 + 2 + 1


def test_schema_from_dict_accepts_codes_and_dtypes() -> None:
    from_codes = ModelSchema({"w": ((2, 2), "F32"), "b": ([2], "F64")})
    from_dtypes = ModelSchema(
        {"w": ((2, 2), torch.float32), "b": ((2,), torch.float64)}
    )

    assert from_codes == from_dtypes


def test_schema_json_round_trip() -> None:
    schema = ModelSchema.from_module(TwoLayer())

    assert ModelSchema.from_json(schema.to_json()) == schema


def test_schema_hash_matches_documented_json() -> None:
    schema = ModelSchema({"w": ((2, 3), "F32"), "b": ((3,), "F32")})
    document = (
        '{"format_version":1,"tensors":['
        '{"dtype":"F32","name":"w","shape":[2,3]},'
        '{"dtype":"F32","name":"b","shape":[3]}]}'
    )

    assert schema.to_json() == document
    assert schema.schema_hash() == "0x" + hashlib.sha256(document.encode()).hexdigest()


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"w": ((3, 2), "F32"), "b": ((3,), "F32")}, id="shape"),
        pytest.param({"w": ((2, 3), "F16"), "b": ((3,), "F32")}, id="dtype"),
        pytest.param({"b": ((3,), "F32"), "w": ((2, 3), "F32")}, id="order"),
        pytest.param({"w": ((2, 3), "F32"), "c": ((3,), "F32")}, id="name"),
    ],
)
def test_schema_hash_changes_with_any_field(
    other: dict[str, tuple[tuple[int, ...], str]],
) -> None:
    schema = ModelSchema({"w": ((2, 3), "F32"), "b": ((3,), "F32")})

    assert ModelSchema(other).schema_hash() != schema.schema_hash()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("not json", id="not-json"),
        pytest.param("[]", id="not-object"),
        pytest.param('{"format_version":2,"tensors":[]}', id="unknown-version"),
        pytest.param('{"format_version":1,"tensors":[]}', id="no-tensors"),
        pytest.param(
            '{"format_version":1,"tensors":[{"name":"w","shape":[-1],"dtype":"F32"}]}',
            id="negative-dimension",
        ),
        pytest.param(
            '{"format_version":1,"tensors":[{"name":"w","shape":[1],"dtype":"Q8"}]}',
            id="unknown-dtype",
        ),
        pytest.param(
            '{"format_version":1,"tensors":['
            '{"name":"w","shape":[1],"dtype":"F32"},'
            '{"name":"w","shape":[1],"dtype":"F32"}]}',
            id="duplicate-name",
        ),
        pytest.param(
            '{"format_version":1,"tensors":[{"name":"w","shape":[1]}]}',
            id="missing-dtype",
        ),
    ],
)
def test_schema_from_json_rejects_invalid(text: str) -> None:
    with pytest.raises(UsageError):
        ModelSchema.from_json(text)


def test_schema_rejects_reserved_name() -> None:
    with pytest.raises(UsageError, match="reserved"):
        ModelSchema({"__metadata__": ((1,), "F32")})


def test_flatten_and_unflatten_round_trip() -> None:
    module = TwoLayer()
    state = {k: v for k, v in module.state_dict().items() if k != "steps"}
    schema = ModelSchema.from_state_dict(state)

    vector = schema.flatten(state)
    restored = schema.unflatten(vector)

    assert vector.shape == (schema.numel,)
    assert torch.equal(vector[:12], state["hidden.weight"].reshape(-1))
    assert all(torch.equal(restored[name], state[name]) for name in state)


def test_flatten_rejects_mismatched_tensors() -> None:
    schema = ModelSchema({"w": ((2,), "F32")})

    with pytest.raises(UsageError, match=r"tensor 'w' has shape \[3\], expected \[2\]"):
        schema.flatten({"w": torch.zeros(3)})


def test_flatten_rejects_integer_schema() -> None:
    schema = ModelSchema.from_module(TwoLayer())

    with pytest.raises(UsageError, match="non-float dtype I64"):
        schema.flatten(TwoLayer().state_dict())


def test_unflatten_rejects_wrong_length() -> None:
    schema = ModelSchema({"w": ((2,), "F32")})

    with pytest.raises(UsageError, match="2 elements"):
        schema.unflatten(torch.zeros(3))


def test_first_difference_reports_missing_before_extra() -> None:
    schema = ModelSchema({"a": ((1,), "F32"), "b": ((1,), "F32")})
    entries = {"a": ((1,), "F32"), "z": ((1,), "F32")}

    assert schema.first_difference(entries) == "missing tensor 'b'"
    assert schema.first_difference({**entries, "b": ((1,), "F32")}) == (
        "unexpected tensor 'z'"
    )


def test_schema_json_is_plain_json() -> None:
    document = json.loads(ModelSchema({"w": ((1,), "BF16")}).to_json())

    assert document == {
        "format_version": 1,
        "tensors": [{"name": "w", "shape": [1], "dtype": "BF16"}],
    }
