"""Tests of the update codec: round trips, canonical bytes and hostile inputs."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import re
import sys
from collections.abc import Callable

import pytest
import safetensors.torch
import torch

from ztfm_chain.exceptions import (
    BadSampleCount,
    MalformedUpdate,
    NonFiniteValues,
    SchemaMismatch,
    UpdateError,
    UpdateTooLarge,
    UsageError,
)
from ztfm_chain.updates import (
    DecodedUpdate,
    ModelSchema,
    UpdateMeta,
    decode_model,
    decode_update,
    encode_model,
    encode_update,
    sha256_hex,
    state_dict_hash,
)

BASE_HASH = "0x" + "ab" * 32
MAX_SIZE = 1 << 20
MAX_SAMPLES = 10_000


def make_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {
        "fc.weight": torch.randn(4, 3, generator=generator),
        "fc.bias": torch.randn(4, generator=generator),
        "out.weight": torch.randn(2, 4, generator=generator),
    }


def make_meta(**overrides: object) -> UpdateMeta:
    fields: dict[str, object] = {
        "model_id": 3,
        "round": 12,
        "base_model_hash": BASE_HASH,
        "sample_count": 57,
        "kind": "delta",
    }
    fields.update(overrides)
    return UpdateMeta(**fields)  # type: ignore[arg-type]


SCHEMA = ModelSchema.from_state_dict(make_tensors())


def decode(data: bytes, **limits: int) -> DecodedUpdate:
    return decode_update(
        data,
        SCHEMA,
        max_size=limits.get("max_size", MAX_SIZE),
        max_sample_count=limits.get("max_sample_count", MAX_SAMPLES),
    )


def valid_metadata(**overrides: str) -> dict[str, str]:
    metadata = make_meta().to_metadata()
    metadata.update(overrides)
    return metadata


def raw_safetensors(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None
) -> bytes:
    """Bytes from safetensors itself, bypassing encode_update's checks."""
    return safetensors.torch.save(tensors, metadata=metadata)


def handmade(header: object, data: bytes, *, length: int | None = None) -> bytes:
    """A safetensors-like file with a JSON header written by hand."""
    text = header if isinstance(header, str) else json.dumps(header)
    encoded = text.encode("utf-8")
    prefix = (len(encoded) if length is None else length).to_bytes(8, "little")
    return prefix + encoded + data


def layout(*entries: tuple[str, str, list[int], int, int]) -> dict[str, object]:
    header: dict[str, object] = {"__metadata__": valid_metadata()}
    for name, dtype, shape, begin, end in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
    return header


def without(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    return {key: value for key, value in tensors.items() if key != name}


def with_value(name: str, value: float) -> dict[str, torch.Tensor]:
    tensors = make_tensors()
    tensors[name] = tensors[name].clone()
    tensors[name][1, 2] = value
    return tensors


def torch_save_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(make_tensors(), buffer)
    return buffer.getvalue()


# --- round trip and canonical encoding -------------------------------------------


def test_round_trip_restores_tensors_and_meta() -> None:
    tensors = make_tensors()
    data = encode_update(tensors, make_meta())

    decoded = decode(data)

    assert decoded.meta == make_meta()
    assert list(decoded.tensors) == list(SCHEMA)
    for name, tensor in tensors.items():
        assert torch.equal(decoded.tensors[name], tensor)
    assert decoded.sha256 == "0x" + hashlib.sha256(data).hexdigest()


def test_decoded_tensors_are_writable_copies() -> None:
    decoded = decode(encode_update(make_tensors(), make_meta()))

    decoded.tensors["fc.bias"][0] = 42.0

    assert float(decoded.tensors["fc.bias"][0]) == 42.0


def test_encoding_ignores_insertion_order() -> None:
    tensors = make_tensors()
    expected = encode_update(tensors, make_meta())
    names = list(tensors)
    shuffler = random.Random(1)

    for _ in range(20):
        shuffler.shuffle(names)
        shuffled = {name: tensors[name] for name in names}
        assert encode_update(shuffled, make_meta()) == expected


def test_encoding_is_repeatable() -> None:
    # safetensors writes __metadata__ from a hash map with a random order per call,
    # so only the canonical rewrite makes repeated calls agree.
    encodings = {encode_update(make_tensors(), make_meta()) for _ in range(30)}

    assert len(encodings) == 1


def test_encoding_matches_documented_layout() -> None:
    tensors = {
        "b": torch.tensor([1.0, 2.0]),
        "a": torch.tensor([[3, 4]], dtype=torch.int64),
    }
    metadata = valid_metadata()
    header = (
        '{"__metadata__":{'
        + ",".join(f'"{key}":"{metadata[key]}"' for key in sorted(metadata))
        + '},"a":{"dtype":"I64","shape":[1,2],"data_offsets":[0,16]},'
        + '"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}'
    ).encode()
    header += b" " * (-len(header) % 8)
    data = (
        torch.tensor([3, 4], dtype=torch.int64).numpy().tobytes()
        + torch.tensor([1.0, 2.0]).numpy().tobytes()
    )
    expected = len(header).to_bytes(8, "little") + header + data

    assert encode_update(tensors, make_meta()) == expected


def test_encoding_normalises_layout_and_grad() -> None:
    tensors = make_tensors()
    base = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    odd = dict(tensors)
    odd["fc.weight"] = base.t()  # non-contiguous view
    contiguous = dict(tensors)
    contiguous["fc.weight"] = base.t().contiguous()
    needs_grad = {name: t.clone().requires_grad_(True) for name, t in tensors.items()}

    assert encode_update(odd, make_meta()) == encode_update(contiguous, make_meta())
    assert encode_update(needs_grad, make_meta()) == encode_update(tensors, make_meta())


def test_encoding_accepts_tensors_sharing_storage() -> None:
    shared = torch.arange(6, dtype=torch.float32)
    tensors = {"x": shared[:3], "y": shared[3:]}

    data = encode_update(tensors, make_meta())

    schema = ModelSchema.from_state_dict(tensors)
    decoded = decode_update(data, schema, max_size=MAX_SIZE, max_sample_count=100)
    assert torch.equal(decoded.tensors["y"], torch.tensor([3.0, 4.0, 5.0]))


def test_different_meta_gives_different_hash() -> None:
    first = encode_update(make_tensors(), make_meta())
    second = encode_update(make_tensors(), make_meta(round=13))

    assert sha256_hex(first) != sha256_hex(second)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        pytest.param({}, "empty", id="no-tensors"),
        pytest.param({"w": torch.tensor([float("nan")])}, "NaN", id="nan"),
        pytest.param({"w": torch.tensor([1 + 1j])}, "unsupported", id="complex-dtype"),
        pytest.param({"__metadata__": torch.zeros(1)}, "invalid", id="reserved-name"),
        pytest.param({"": torch.zeros(1)}, "invalid", id="empty-name"),
    ],
)
def test_encode_rejects_invalid_tensors(
    tensors: dict[str, torch.Tensor], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        encode_update(tensors, make_meta())


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"model_id": -1}, id="negative-model-id"),
        pytest.param({"round": 2**256}, id="round-above-uint256"),
        pytest.param({"base_model_hash": "0x" + "AB" * 32}, id="uppercase-hash"),
        pytest.param({"base_model_hash": "ab" * 32}, id="hash-without-0x"),
        pytest.param({"sample_count": 0}, id="zero-samples"),
        pytest.param({"sample_count": True}, id="bool-samples"),
        pytest.param({"kind": "gradient"}, id="unknown-kind"),
    ],
)
def test_update_meta_rejects_invalid_values(overrides: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        make_meta(**overrides)


# --- hostile inputs: one per check -----------------------------------------------

VALID = encode_update(make_tensors(), make_meta())
F32_BYTES = torch.zeros(12).numpy().tobytes()

HOSTILE: list[tuple[str, Callable[[], bytes], type[UpdateError], str]] = [
    ("empty-bytes", lambda: b"", MalformedUpdate, "shorter than the 8-byte"),
    ("seven-bytes", lambda: b"\x02" * 7, MalformedUpdate, "shorter than the 8-byte"),
    ("truncated-data", lambda: VALID[:-5], MalformedUpdate, "out of range"),
    ("extra-bytes", lambda: VALID + b"\x00" * 4, MalformedUpdate, "extra bytes"),
    (
        "header-length-past-end",
        lambda: (len(VALID)).to_bytes(8, "little") + VALID[8:],
        MalformedUpdate,
        "runs past the end",
    ),
    (
        "header-length-above-maximum",
        lambda: (2**63).to_bytes(8, "little") + VALID[8:],
        MalformedUpdate,
        "exceeds the maximum",
    ),
    (
        "header-length-zero",
        lambda: (0).to_bytes(8, "little") + VALID[8:],
        MalformedUpdate,
        "too small",
    ),
    (
        "bad-json",
        lambda: handmade('{"a": [1, 2', b""),
        MalformedUpdate,
        "not valid JSON",
    ),
    (
        "header-not-object",
        lambda: handmade("[1, 2]", b""),
        MalformedUpdate,
        "start with",
    ),
    (
        "header-not-utf8",
        lambda: handmade("{}", b"")[:8] + b"\xff\xfe",
        MalformedUpdate,
        "UTF-8",
    ),
    (
        "duplicate-json-key",
        lambda: handmade(
            '{"__metadata__": {}, "x": {"dtype": "F32", "shape": [1], '
            '"data_offsets": [0, 4]}, "x": {"dtype": "F32", "shape": [1], '
            '"data_offsets": [0, 4]}}',
            b"\x00" * 4,
        ),
        MalformedUpdate,
        "duplicate key",
    ),
    (
        "nan-literal-in-header",
        lambda: handmade('{"__metadata__": {}, "x": NaN}', b""),
        MalformedUpdate,
        "non-standard JSON constant",
    ),
    (
        "deeply-nested-json",
        lambda: handmade('{"a":' + "[" * 100_000 + "]" * 100_000 + "}", b""),
        MalformedUpdate,
        "nested deeper than 3 levels",
    ),
    (
        "overlapping-offsets",
        lambda: handmade(
            layout(("a", "F32", [2], 0, 8), ("b", "F32", [2], 4, 12)), F32_BYTES[:12]
        ),
        MalformedUpdate,
        "overlapping",
    ),
    (
        "gap-between-tensors",
        lambda: handmade(
            layout(("a", "F32", [1], 0, 4), ("b", "F32", [1], 8, 12)), F32_BYTES[:12]
        ),
        MalformedUpdate,
        "gap",
    ),
    (
        "offsets-out-of-range",
        lambda: handmade(layout(("a", "F32", [4], 0, 16)), F32_BYTES[:8]),
        MalformedUpdate,
        "out of range",
    ),
    (
        "offsets-disagree-with-shape",
        lambda: handmade(layout(("a", "F32", [3], 0, 8)), F32_BYTES[:8]),
        MalformedUpdate,
        "needs 12 bytes",
    ),
    (
        "end-before-begin",
        lambda: handmade(layout(("a", "F32", [0], 8, 4)), F32_BYTES[:8]),
        MalformedUpdate,
        "end before begin",
    ),
    (
        "unknown-dtype",
        lambda: handmade(layout(("a", "F8_E4M3", [4], 0, 4)), F32_BYTES[:4]),
        MalformedUpdate,
        "unknown dtype",
    ),
    (
        "negative-dimension",
        lambda: handmade(layout(("a", "F32", [-1], 0, 0)), b""),
        MalformedUpdate,
        "invalid shape",
    ),
    (
        "boolean-dimension",
        lambda: handmade(layout(("a", "F32", [True], 0, 4)), F32_BYTES[:4]),
        MalformedUpdate,
        "invalid shape",
    ),
    (
        "extra-entry-field",
        lambda: handmade(
            {
                "__metadata__": valid_metadata(),
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1},
            },
            F32_BYTES[:4],
        ),
        MalformedUpdate,
        "expected exactly",
    ),
    (
        "missing-metadata",
        lambda: raw_safetensors(make_tensors(), None),
        MalformedUpdate,
        "no __metadata__",
    ),
    (
        "metadata-not-object",
        lambda: handmade(
            {
                "__metadata__": ["x"],
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            },
            F32_BYTES[:4],
        ),
        MalformedUpdate,
        "not an object",
    ),
    (
        "metadata-value-not-string",
        lambda: handmade(
            {
                "__metadata__": {**valid_metadata(), "round": 12},
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            },
            F32_BYTES[:4],
        ),
        MalformedUpdate,
        "must be a string",
    ),
    (
        "metadata-key-missing",
        lambda: raw_safetensors(
            make_tensors(),
            {k: v for k, v in valid_metadata().items() if k != "base_model_hash"},
        ),
        MalformedUpdate,
        "missing keys",
    ),
    (
        "metadata-key-extra",
        lambda: raw_safetensors(make_tensors(), valid_metadata(note="hi")),
        MalformedUpdate,
        "unexpected keys",
    ),
    (
        "format-version-unknown",
        lambda: raw_safetensors(make_tensors(), valid_metadata(format_version="2")),
        MalformedUpdate,
        "format_version",
    ),
    (
        "kind-unknown",
        lambda: raw_safetensors(make_tensors(), valid_metadata(kind="gradient")),
        MalformedUpdate,
        "kind",
    ),
    (
        "model-id-not-integer",
        lambda: raw_safetensors(make_tensors(), valid_metadata(model_id="3.0")),
        MalformedUpdate,
        "model_id",
    ),
    (
        "round-leading-zero",
        lambda: raw_safetensors(make_tensors(), valid_metadata(round="012")),
        MalformedUpdate,
        "round",
    ),
    (
        "sample-count-not-integer",
        lambda: raw_safetensors(make_tensors(), valid_metadata(sample_count="1e3")),
        MalformedUpdate,
        "sample_count",
    ),
    (
        "base-hash-short",
        lambda: raw_safetensors(
            make_tensors(), valid_metadata(base_model_hash="0x" + "ab" * 31)
        ),
        MalformedUpdate,
        "base_model_hash",
    ),
    (
        "pickle-file",
        lambda: pickle.dumps(make_tensors()),
        MalformedUpdate,
        "header length",
    ),
    ("torch-save-file", torch_save_bytes, MalformedUpdate, "header length"),
    (
        "wrong-dtype",
        lambda: raw_safetensors(
            {**make_tensors(), "fc.bias": torch.zeros(4, dtype=torch.float64)},
            valid_metadata(),
        ),
        SchemaMismatch,
        "tensor 'fc.bias' has dtype F64, expected F32",
    ),
    (
        "wrong-shape",
        lambda: raw_safetensors(
            {**make_tensors(), "fc.weight": torch.zeros(3, 4)}, valid_metadata()
        ),
        SchemaMismatch,
        "tensor 'fc.weight' has shape [3, 4], expected [4, 3]",
    ),
    (
        "missing-tensor",
        lambda: raw_safetensors(without(make_tensors(), "fc.bias"), valid_metadata()),
        SchemaMismatch,
        "missing tensor 'fc.bias'",
    ),
    (
        "extra-tensor",
        lambda: raw_safetensors(
            {**make_tensors(), "backdoor": torch.zeros(1)}, valid_metadata()
        ),
        SchemaMismatch,
        "unexpected tensor 'backdoor'",
    ),
    (
        "nan",
        lambda: raw_safetensors(
            with_value("fc.weight", float("nan")), valid_metadata()
        ),
        NonFiniteValues,
        "tensor 'fc.weight' contains 1 NaN",
    ),
    (
        "positive-infinity",
        lambda: raw_safetensors(
            with_value("out.weight", float("inf")), valid_metadata()
        ),
        NonFiniteValues,
        "tensor 'out.weight'",
    ),
    (
        "negative-infinity",
        lambda: raw_safetensors(
            with_value("fc.weight", float("-inf")), valid_metadata()
        ),
        NonFiniteValues,
        "tensor 'fc.weight'",
    ),
    (
        "zero-sample-count",
        lambda: raw_safetensors(make_tensors(), valid_metadata(sample_count="0")),
        BadSampleCount,
        "sample_count 0 ",
    ),
    (
        "negative-sample-count",
        lambda: raw_safetensors(make_tensors(), valid_metadata(sample_count="-5")),
        BadSampleCount,
        "sample_count -5 ",
    ),
    (
        "absurd-sample-count",
        lambda: raw_safetensors(
            make_tensors(), valid_metadata(sample_count=str(10**30))
        ),
        BadSampleCount,
        f"sample_count {10**30} ",
    ),
]


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [pytest.param(b, e, m, id=i) for i, b, e, m in HOSTILE],
)
def test_decode_rejects_hostile_input(
    build: Callable[[], bytes], error: type[UpdateError], message: str
) -> None:
    data = build()

    with pytest.raises(error, match=re.escape(message)) as caught:
        decode(data)

    assert type(caught.value) is error
    assert caught.value.reason == error.reason


def test_decode_rejects_oversized_before_parsing() -> None:
    garbage = b"\xff" * 100

    with pytest.raises(UpdateTooLarge, match="100 bytes, above the limit of 99"):
        decode(garbage, max_size=99)


def test_decode_accepts_update_at_size_limit() -> None:
    decoded = decode(VALID, max_size=len(VALID))

    assert decoded.meta.sample_count == 57


def test_decode_accepts_sample_count_at_bound() -> None:
    decoded = decode(VALID, max_sample_count=57)

    assert decoded.meta.sample_count == 57


def test_decode_rejects_sample_count_above_bound() -> None:
    with pytest.raises(BadSampleCount, match=r"sample_count 57 .* 1\.\.56"):
        decode(VALID, max_sample_count=56)


@pytest.mark.parametrize(
    ("build", "error"),
    [
        pytest.param(
            lambda: raw_safetensors(
                {**with_value("fc.weight", float("nan")), "extra": torch.zeros(1)},
                valid_metadata(),
            ),
            SchemaMismatch,
            id="schema-before-finite",
        ),
        pytest.param(
            lambda: raw_safetensors(
                with_value("fc.weight", float("nan")), valid_metadata(sample_count="0")
            ),
            NonFiniteValues,
            id="finite-before-sample-count",
        ),
        pytest.param(
            lambda: raw_safetensors(
                {**make_tensors(), "extra": torch.zeros(1)}, valid_metadata(kind="x")
            ),
            MalformedUpdate,
            id="metadata-before-schema",
        ),
    ],
)
def test_decode_check_order(
    build: Callable[[], bytes], error: type[UpdateError]
) -> None:
    with pytest.raises(error):
        decode(build())


def test_decode_deep_nesting_high_recursion_limit() -> None:
    # eth-account imports py_ecc, which raises the recursion limit to 100,000; the
    # JSON parser would then overflow the C stack on deep nesting.
    nested = handmade('{"a":' + "[" * 300_000 + "]" * 300_000 + "}", b"")
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, 100_000))
    try:
        with pytest.raises(MalformedUpdate, match="nested deeper"):
            decode(nested)
    finally:
        sys.setrecursionlimit(previous)


def test_decode_never_unpickles(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("decode_update must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)

    assert decode(VALID).meta == make_meta()


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param({"max_size": 0}, id="zero-max-size"),
        pytest.param({"max_sample_count": 0}, id="zero-max-sample-count"),
    ],
)
def test_decode_rejects_invalid_limits(limits: dict[str, int]) -> None:
    with pytest.raises(UsageError):
        decode(VALID, **limits)


# --- global models ---------------------------------------------------------------


def test_model_round_trip_and_hash() -> None:
    tensors = make_tensors()
    data = encode_model(tensors)

    decoded = decode_model(data, SCHEMA, max_size=MAX_SIZE)

    assert all(torch.equal(decoded[name], tensors[name]) for name in tensors)
    assert state_dict_hash(tensors) == "0x" + hashlib.sha256(data).hexdigest()


def test_state_dict_hash_depends_only_on_values() -> None:
    tensors = make_tensors()
    reordered = dict(reversed(list(tensors.items())))
    changed = dict(tensors)
    changed["fc.bias"] = tensors["fc.bias"] + 1e-6

    assert state_dict_hash(reordered) == state_dict_hash(tensors)
    assert state_dict_hash(changed) != state_dict_hash(tensors)


def test_update_bytes_are_not_a_model() -> None:
    with pytest.raises(MalformedUpdate, match="unexpected keys"):
        decode_model(VALID, SCHEMA, max_size=MAX_SIZE)


def test_model_bytes_are_not_an_update() -> None:
    with pytest.raises(MalformedUpdate, match="missing keys"):
        decode(encode_model(make_tensors()))


def test_decode_model_rejects_non_finite() -> None:
    data = raw_safetensors(
        with_value("fc.weight", float("inf")),
        {"format_version": "1", "kind": "weights"},
    )

    with pytest.raises(NonFiniteValues, match=r"'fc\.weight'"):
        decode_model(data, SCHEMA, max_size=MAX_SIZE)


def test_decode_model_rejects_oversized() -> None:
    data = encode_model(make_tensors())

    with pytest.raises(UpdateTooLarge):
        decode_model(data, SCHEMA, max_size=len(data) - 1)
