"""Fixtures that enrol devices, create models and open rounds on the test chain."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from ztfm_chain.chain import errors
from ztfm_chain.chain.deploy import System
from ztfm_chain.chain.models import ModelParams, create_model, open_round
from ztfm_chain.exceptions import ContractError
from ztfm_chain.identity import registrar
from ztfm_chain.identity.commitments import Commitment

_seeds = itertools.count(1)

BASE_MODEL = b"foundation model bytes"
BASE_HASH = hashlib.sha256(BASE_MODEL).digest()
BASE_CID = "bafkreib5wjpwafqz3vfq3ohlv2zt6fhfwcfdwllwnonk6pxuwelc2hnxey"
MEASUREMENT = hashlib.sha256(b"firmware 1.4.2").digest()
UPDATE_CID = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


@contextmanager
def reverts(name: str, /, **expected: Any) -> Iterator[None]:
    """Expect the named custom error, with the given arguments among its own."""
    with pytest.raises(ContractError) as caught:
        yield
    error = caught.value
    assert error.error_name == name, f"expected {name}, got {error}"
    assert isinstance(error, getattr(errors, name))
    for key, value in expected.items():
        assert error.arguments[key] == value, (
            f"{name}.{key}: expected {value!r}, got {error.arguments[key]!r}"
        )


def new_key() -> LocalAccount:
    """Return a fresh device key, deterministic across runs."""
    seed = next(_seeds)
    return Account.from_key(hashlib.sha256(f"device-{seed}".encode()).digest())


def chain_time(system: System) -> int:
    block = system.client.w3.eth.get_block("latest")
    return int(block["timestamp"])


def advance_time(system: System, seconds: int) -> None:
    system.client.rpc("evm_increaseTime", [seconds])
    system.client.rpc("evm_mine")


def fund(system: System, address: str, wei: int = 10**18) -> None:
    """Set the balance of ``address`` with the test chain's own RPC method.

    Ganache 7 has no ``anvil_setBalance``. Its ``evm_setAccountBalance`` also mines
    an empty block, so the block number advances by one on Ganache only.
    """
    client = system.client
    if client.rpc("web3_clientVersion").startswith("Ganache/"):
        client.rpc("evm_setAccountBalance", [address, hex(wei)])
    else:
        client.rpc("anvil_setBalance", [address, hex(wei)])


@pytest.fixture
def enrolled(system: System, roles: Any) -> Callable[..., LocalAccount]:
    """Factory: a new device key, enrolled and attested, optionally funded."""

    def make(
        *,
        segment: int = 1,
        device_roles: int = registrar.ROLE_TRAINER,
        attest: bool = True,
        funded: bool = False,
    ) -> LocalAccount:
        key = new_key()
        registrar.enrol_device(
            system, roles.registrar, key, roles=device_roles, segment=segment
        )
        if attest:
            registrar.attest_device(
                system, roles.attestor, key.address, measurement=MEASUREMENT
            )
        if funded:
            fund(system, key.address)
        return key

    return make


@pytest.fixture
def model(system: System, roles: Any) -> Callable[..., int]:
    """Factory: a model owned by the manager, aggregated by the aggregator."""

    def make(**overrides: Any) -> int:
        segments = overrides.pop("segments", [1])
        params = ModelParams(**{"min_trust": 2_000, "quorum": 1, **overrides})
        return create_model(
            system,
            roles.manager,
            base_model_hash=BASE_HASH,
            base_model_cid=BASE_CID,
            params=params,
            segments=segments,
            aggregators=[roles.aggregator.address],
        )

    return make


@pytest.fixture
def open_model(
    system: System, roles: Any, model: Callable[..., int]
) -> Callable[..., tuple[int, int]]:
    """Factory: a model with its first round open; returns (model id, round)."""

    def make(**overrides: Any) -> tuple[int, int]:
        model_id = model(**overrides)
        return model_id, open_round(system, roles.manager, model_id)

    return make


def commitment_for(
    device: str,
    model_id: int,
    round: int,
    *,
    content: bytes = b"update",
    sample_count: int = 100,
    base_hash: bytes = BASE_HASH,
) -> Commitment:
    return Commitment(
        model_id=model_id,
        round=round,
        device=Web3.to_checksum_address(device),
        content_hash=hashlib.sha256(content).digest(),
        cid=UPDATE_CID,
        sample_count=sample_count,
        base_model_hash=base_hash,
    )
