"""Fetch a model's global weights and check them against the hash on chain.

Devices and aggregators both start a round from the global model, and neither trusts
the store: the bytes are checked against the SHA-256 the chain records before they
are decoded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ztfm_chain.chain.deploy import System
from ztfm_chain.chain.models import model_info, round_info
from ztfm_chain.exceptions import ContentMismatch, UsageError
from ztfm_chain.storage.base import Store
from ztfm_chain.updates import ModelSchema, decode_model, parse_header


@dataclass(frozen=True)
class GlobalModel:
    """Verified global weights of a model, with the hash and CID they came from."""

    model_id: int
    tensors: dict[str, torch.Tensor]
    schema: ModelSchema
    sha256: bytes
    cid: str


def fetch_model_bytes(
    store: Store, cid: str, expected_sha256: bytes, *, what: str
) -> bytes:
    """Get ``cid`` from the store and check its SHA-256 against the chain's value."""
    data = store.get(cid)
    actual = hashlib.sha256(data).digest()
    if actual != expected_sha256:
        raise ContentMismatch(
            f"{what} at {cid} has SHA-256 0x{actual.hex()}, but the chain records "
            f"0x{expected_sha256.hex()}; the store served other bytes"
        )
    return data


def schema_of(data: bytes) -> ModelSchema:
    """Return the schema (names, shapes, dtypes) of verified model bytes."""
    header = parse_header(data)
    return ModelSchema(dict(header.tensors))


def fetch_base_model(system: System, store: Store, model_id: int) -> GlobalModel:
    """Fetch and verify the model's foundation weights (its round-1 base)."""
    info = model_info(system, model_id)
    data = fetch_model_bytes(
        store, info.base_model_cid, info.base_model_hash, what="base model"
    )
    schema = schema_of(data)
    tensors = decode_model(data, schema, max_size=len(data))
    return GlobalModel(
        model_id, tensors, schema, info.base_model_hash, info.base_model_cid
    )


def fetch_round_base(
    system: System, store: Store, model_id: int, round: int, schema: ModelSchema
) -> GlobalModel:
    """Fetch and verify the global model that round ``round`` trains from.

    The CID comes from the model's record (the latest global model); the hash that
    decides is the round's base hash, so a round whose base is no longer the latest
    global model raises :class:`UsageError`.
    """
    info = model_info(system, model_id)
    base_hash = round_info(system, model_id, round).base_model_hash
    if base_hash != info.global_model_hash:
        raise UsageError(
            f"round {round} of model {model_id} trains from 0x{base_hash.hex()}, but "
            f"the current global model is 0x{info.global_model_hash.hex()}; "
            "the round is not the current one"
        )
    data = fetch_model_bytes(
        store, info.global_model_cid, base_hash, what=f"global model of round {round}"
    )
    tensors = decode_model(data, schema, max_size=max(len(data), 1))
    return GlobalModel(model_id, tensors, schema, base_hash, info.global_model_cid)
