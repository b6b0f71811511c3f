"""Chain client: wrong chains, receipts, nonces under concurrency, event pages."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from tests.chain.conftest import fund, new_key
from ztfm_chain.chain import errors
from ztfm_chain.chain.anvil import Anvil
from ztfm_chain.chain.client import ChainClient
from ztfm_chain.chain.deploy import (
    Deployment,
    System,
    connect,
    load_manifest,
    save_manifest,
)
from ztfm_chain.chain.events import iter_events
from ztfm_chain.exceptions import (
    ChainMismatch,
    ChainUnavailable,
    ConfigError,
    ContractError,
    TransactionReverted,
    UsageError,
)
from ztfm_chain.identity import registrar


def test_manifest_round_trip(system: System, tmp_path: Path) -> None:
    path = save_manifest(system.deployment, tmp_path)
    assert path == tmp_path / "deployments" / f"{system.client.chain_id}.json"
    assert load_manifest(path) == system.deployment
    assert not list(path.parent.glob(".manifest-*"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "not valid JSON"),
        ('{"version": 99}', "manifest version 99"),
        ('{"version": 1, "chain_id": 1}', "missing or has an invalid field"),
    ],
    ids=["not-json", "wrong-version", "missing-field"],
)
def test_manifest_invalid_rejected(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_manifest(path)


def test_manifest_missing_names_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ztfm deploy"):
        load_manifest(tmp_path / "none.json")


def test_restarted_chain_detected(system: System) -> None:
    with Anvil() as fresh:
        client = ChainClient(fresh.url)
        # Anvil builds the same genesis block on every start, so the missing code is
        # what gives the restart away.
        with pytest.raises(ChainMismatch, match=r"genesis block|no contract code"):
            connect(client, system.deployment)


def test_other_chain_id_detected(system: System) -> None:
    with (
        Anvil(chain_id=999) as other,
        pytest.raises(ChainMismatch, match="chain id 999"),
    ):
        connect(ChainClient(other.url), system.deployment)


def test_missing_code_detected(system: System) -> None:
    fake = Deployment(
        **{**system.deployment.__dict__, "trust_registry": new_key().address}
    )
    with pytest.raises(ChainMismatch, match="no contract code at TrustRegistry"):
        connect(system.client, fake)


def test_unreachable_endpoint_reported() -> None:
    with pytest.raises(ChainUnavailable, match=r"127\.0\.0\.1:9"):
        ChainClient("http://127.0.0.1:9", request_timeout=1)


def test_concurrent_senders_keep_nonces(system: System, roles: Any) -> None:
    keys = [new_key() for _ in range(24)]
    failures: list[BaseException] = []

    def enrol(key: LocalAccount) -> None:
        try:
            registrar.enrol_device(system, roles.registrar, key)
        except BaseException as exc:  # collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=enrol, args=(k,)) for k in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    for key in keys:
        assert registrar.device_record(system, key.address).status.name == "ACTIVE"


def test_nonce_recovers_after_failed_send(system: System, roles: Any) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    with pytest.raises(errors.DeviceAlreadyEnrolled):
        registrar.enrol_device(system, roles.registrar, key)
    registrar.enrol_device(system, roles.registrar, new_key())


def test_receipt_timeout_reported(system: System) -> None:
    client = ChainClient(system.client.url, receipt_timeout=0.5)
    ganache = client.rpc("web3_clientVersion").startswith("Ganache/")
    sender = new_key()
    fund(system, sender.address)
    client.rpc(
        "miner_stop" if ganache else "evm_setAutomine", [] if ganache else [False]
    )
    try:
        tx = {
            "to": sender.address,
            "value": 0,
            "gas": 21000,
            "gasPrice": client.w3.eth.gas_price * 2,
            "nonce": client.w3.eth.get_transaction_count(sender.address),
            "chainId": client.chain_id,
        }
        tx_hash = client.w3.eth.send_raw_transaction(
            sender.sign_transaction(tx).raw_transaction
        )
        with pytest.raises(Exception, match="no receipt for transaction"):
            client.wait(tx_hash)
    finally:
        client.rpc(
            "miner_start" if ganache else "evm_setAutomine", [] if ganache else [True]
        )
        client.rpc("evm_mine")


def test_failed_transaction_with_fixed_gas_decoded(system: System, roles: Any) -> None:
    key = new_key()
    registrar.enrol_device(system, roles.registrar, key)
    # A fixed gas skips estimation, so the revert happens on chain and is replayed.
    with pytest.raises(errors.StatusTransitionInvalid, match="transaction 0x"):
        system.client.transact(
            system.devices.functions.reinstate(key.address),
            roles.registrar,
            gas=200_000,
        )


def test_decode_revert_forms() -> None:
    error_string = "08c379a0" + (
        "0000000000000000000000000000000000000000000000000000000000000020"
        "0000000000000000000000000000000000000000000000000000000000000003"
        "6261640000000000000000000000000000000000000000000000000000000000"
    )
    decoded = errors.decode_revert("0x" + error_string)
    assert isinstance(decoded, TransactionReverted)
    assert "bad" in str(decoded)
    panic = errors.decode_revert("0x4e487b71" + "11".rjust(64, "0"))
    assert "panic code 0x11" in str(panic)
    unknown = errors.decode_revert("0xdeadbeef")
    assert "unknown custom error selector 0xdeadbeef" in str(unknown)
    assert "without data" in str(errors.decode_revert(None))


def test_every_abi_error_has_a_class() -> None:
    for name in ("DeviceAlreadyEnrolled", "TrustTooLow", "SignatureHighS"):
        cls = getattr(errors, name)
        assert issubclass(cls, ContractError)
        assert cls.error_name == name
    with pytest.raises(AttributeError, match="no contract error named"):
        errors.NoSuchError  # noqa: B018 - the attribute access is the test


def test_iter_events_pages_without_gap_or_duplicate(
    system: System, roles: Any, enrolled: Callable[..., LocalAccount]
) -> None:
    start = system.client.w3.eth.block_number + 1
    devices = [enrolled(attest=False).address for _ in range(7)]
    end = system.client.w3.eth.block_number
    event = system.devices.events.DeviceEnrolled
    expected = [
        e["args"]["device"] for e in iter_events(system.client, event, start, end)
    ]
    assert expected == devices
    for page_size in (1, 2, 3, end - start + 1, 1000):
        got = [
            e["args"]["device"]
            for e in iter_events(system.client, event, start, end, page_size=page_size)
        ]
        assert got == devices, f"page_size={page_size}"


def test_iter_events_filters_by_argument(
    system: System, enrolled: Callable[..., LocalAccount]
) -> None:
    start = system.client.w3.eth.block_number + 1
    wanted = enrolled(attest=False).address
    enrolled(attest=False)
    end = system.client.w3.eth.block_number
    found = list(
        iter_events(
            system.client,
            system.devices.events.DeviceEnrolled,
            start,
            end,
            argument_filters={"device": wanted},
            page_size=1,
        )
    )
    assert [e["args"]["device"] for e in found] == [wanted]


@pytest.mark.parametrize(
    ("start", "end", "page"),
    [(-1, 5, 10), (10, 5, 10), (0, 5, 0)],
    ids=["negative-start", "reversed", "zero-page"],
)
def test_iter_events_bad_range_rejected(
    system: System, start: int, end: int, page: int
) -> None:
    with pytest.raises(UsageError):
        list(
            iter_events(
                system.client,
                system.devices.events.DeviceEnrolled,
                start,
                end,
                page_size=page,
            )
        )
