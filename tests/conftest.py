"""Session-wide fixtures: one Anvil per test session, one deployment on it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ztfm_chain.chain.anvil import ANVIL_MNEMONIC, Anvil
from ztfm_chain.chain.client import ChainClient
from ztfm_chain.chain.deploy import RoleHolders, System, connect, deploy
from ztfm_chain.chain.ganache import Ganache

Account.enable_unaudited_hdwallet_features()


def dev_account(index: int) -> LocalAccount:
    """Return Anvil's funded development account ``index``."""
    return Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


class Roles:
    """The session's accounts, one per role, all funded."""

    admin = dev_account(0)
    registrar = dev_account(1)
    attestor = dev_account(2)
    manager = dev_account(3)
    aggregator = dev_account(4)
    relayer = dev_account(5)
    outsider = dev_account(6)
    aggregator2 = dev_account(7)


@pytest.fixture(scope="session")
def roles() -> type[Roles]:
    return Roles


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil | Ganache]:
    """The session's chain: Anvil, or Ganache when ZTFM_TEST_CHAIN=ganache."""
    chain = os.environ.get("ZTFM_TEST_CHAIN") or "anvil"
    if chain == "anvil":
        node: Anvil | Ganache = Anvil(accounts=10)
    elif chain == "ganache":
        node = Ganache(accounts=10)
    else:
        raise pytest.UsageError(
            f"invalid ZTFM_TEST_CHAIN={chain!r}; expected 'anvil' or 'ganache'"
        )
    with node:
        yield node


@pytest.fixture(scope="session")
def client(anvil: Anvil) -> ChainClient:
    return ChainClient(anvil.url)


@pytest.fixture(scope="session")
def deployed(client: ChainClient) -> System:
    deployment = deploy(
        client,
        Roles.admin,
        RoleHolders(
            registrar=Roles.registrar.address,
            attestor=Roles.attestor.address,
            model_manager=Roles.manager.address,
            aggregators=(Roles.aggregator.address, Roles.aggregator2.address),
        ),
    )
    return connect(client, deployment)


@pytest.fixture
def system(deployed: System) -> Iterator[System]:
    """The deployment, reverted to its pristine state after each test."""
    client = deployed.client
    snapshot = client.rpc("evm_snapshot")
    try:
        yield deployed
    finally:
        client.rpc("evm_revert", [snapshot])
        client.reset_nonces()
