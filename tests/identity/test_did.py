"""DID formatting and parsing, and DID documents built from chain state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from hypothesis import given
from hypothesis import strategies as st
from web3 import Web3

from tests.chain.conftest import MEASUREMENT, chain_time, new_key
from tests.identity.conftest import add_delegate, revoke_delegate, set_attribute
from ztfm_chain.chain.deploy import System
from ztfm_chain.exceptions import UsageError
from ztfm_chain.identity import registrar
from ztfm_chain.identity.did import (
    REGISTRATION_SERVICE_TYPE,
    build_did_document,
    did_for,
    parse_did,
)

ADDRESS = "0xD6D2FB174c804BD637950c0577498d2113A406C4"


def registration(document: dict[str, Any]) -> dict[str, Any]:
    """Return the document's single ZtfmDeviceRegistration service entry."""
    entries: list[dict[str, Any]] = [
        service
        for service in document["service"]
        if service["type"] == REGISTRATION_SERVICE_TYPE
    ]
    assert len(entries) == 1, entries
    return entries[0]


# ---------------------------------------------------------------------------------
# Identifiers
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chain_id", "address", "expected"),
    [
        (31337, ADDRESS, f"did:ethr:0x7a69:{ADDRESS}"),
        (31337, ADDRESS.lower(), f"did:ethr:0x7a69:{ADDRESS}"),
        (1, ADDRESS, f"did:ethr:0x1:{ADDRESS}"),
        (11155111, ADDRESS, f"did:ethr:0xaa36a7:{ADDRESS}"),
    ],
)
def test_did_for_formats(chain_id: int, address: str, expected: str) -> None:
    assert did_for(chain_id, address) == expected


@pytest.mark.parametrize(
    ("chain_id", "address"),
    [
        (0, ADDRESS),
        (-1, ADDRESS),
        (True, ADDRESS),
        (31337, ADDRESS[:-1]),
        (31337, ADDRESS[2:]),
        (31337, ADDRESS[:-1] + "c"),  # checksum broken by one letter's case
        (31337, "0x" + "g" * 40),
    ],
)
def test_did_for_rejects(chain_id: int, address: str) -> None:
    with pytest.raises(UsageError) as caught:
        did_for(chain_id, address)

    invalid_value = chain_id if chain_id is True or chain_id < 1 else address
    assert repr(invalid_value) in str(caught.value)


@pytest.mark.parametrize(
    ("did", "expected"),
    [
        (f"did:ethr:0x7a69:{ADDRESS}", (31337, ADDRESS)),
        (f"did:ethr:0x7a69:{ADDRESS.lower()}", (31337, ADDRESS)),
        (f"did:ethr:0x7a69:0x{ADDRESS[2:].upper()}", (31337, ADDRESS)),
        (f"did:ethr:0x1:{ADDRESS}", (1, ADDRESS)),
        (f"did:ethr:{ADDRESS}", (1, ADDRESS)),
        (f"did:ethr:0xaa36a7:{ADDRESS}", (11155111, ADDRESS)),
    ],
)
def test_parse_did_accepts(did: str, expected: tuple[int, str]) -> None:
    assert parse_did(did) == expected


@pytest.mark.parametrize(
    "did",
    [
        "",
        ADDRESS,
        f"did:web:0x7a69:{ADDRESS}",
        f"did:ethr:0x7a69:{ADDRESS}#controller",
        f"did:ethr:0x7a69:{ADDRESS}?versionId=3",
        f"did:ethr:0x7a69:{ADDRESS}/path",
        f"did:ethr:0x7A69:{ADDRESS}",
        f"did:ethr:0x07a69:{ADDRESS}",
        f"did:ethr:0x0:{ADDRESS}",
        f"did:ethr:31337:{ADDRESS}",
        f"did:ethr:sepolia:{ADDRESS}",
        f"did:ethr::{ADDRESS}",
        f"did:ethr:0x7a69:0x7a69:{ADDRESS}",
        f"did:ethr:0x7a69:{ADDRESS[:-1]}",
        f"did:ethr:0x7a69:{ADDRESS[:-1]}c",
        f"did:ethr:0x7a69:{ADDRESS} ",
        f"did:ethr:0x7a69:{ADDRESS}\n",
        "did:ethr:0x7a69:0x02" + "ab" * 32,
    ],
)
def test_parse_did_rejects(did: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_did(did)

    assert repr(did) in str(caught.value)


@given(
    chain_id=st.integers(min_value=1, max_value=2**64),
    raw=st.binary(min_size=20, max_size=20),
)
def test_did_round_trip(chain_id: int, raw: bytes) -> None:
    address = Web3.to_checksum_address(raw)

    assert parse_did(did_for(chain_id, address)) == (chain_id, address)


# ---------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------


def test_document_of_attested_device(
    system: System, enrolled: Callable[..., LocalAccount]
) -> None:
    device = enrolled(segment=7)
    did = did_for(system.client.chain_id, device.address)

    document = build_did_document(system, did)

    assert document["id"] == did
    (controller,) = document["verificationMethod"]
    assert controller == {
        "id": f"{did}#controller",
        "type": "EcdsaSecp256k1RecoveryMethod2020",
        "controller": did,
        "blockchainAccountId": f"eip155:31337:{device.address}",
    }
    assert document["authentication"] == [f"{did}#controller"]
    assert document["assertionMethod"] == [f"{did}#controller"]
    entry = registration(document)
    assert entry["id"] == f"{did}#ztfm-registration"
    assert entry["serviceEndpoint"] == (
        f"eip155:31337:{system.deployment.device_registry}"
    )
    assert entry["enrolled"] is True
    assert entry["status"] == "active"
    assert entry["roles"] == registrar.ROLE_TRAINER
    assert entry["segment"] == 7
    assert entry["measurement"] == "0x" + MEASUREMENT.hex()
    assert entry["metadataCidHash"] == "0x" + keccak(b"").hex()
    assert entry["attestedAt"] > 0
    assert entry["credentialExpiresAt"] > chain_time(system)
    assert entry["credentialValid"] is True


def test_document_from_address(
    system: System, enrolled: Callable[..., LocalAccount]
) -> None:
    device = enrolled()

    by_address = build_did_document(system, device.address.lower())
    by_did = build_did_document(system, did_for(31337, device.address))

    assert by_address == by_did


def test_document_of_unenrolled_address(system: System) -> None:
    stranger = new_key()

    document = build_did_document(system, stranger.address)

    assert document["verificationMethod"][0]["blockchainAccountId"] == (
        f"eip155:31337:{stranger.address}"
    )
    entry = registration(document)
    assert entry["enrolled"] is False
    assert entry["status"] == "none"
    assert entry["credentialValid"] is False
    assert entry["measurement"] == "0x" + "00" * 32


def test_document_at_earlier_block(system: System, roles: Any) -> None:
    device = new_key()
    before = system.client.w3.eth.block_number
    registrar.enrol_device(system, roles.registrar, device)
    enrolled_at = system.client.w3.eth.block_number

    then = build_did_document(system, device.address, before)
    now = build_did_document(system, device.address, enrolled_at)

    assert registration(then)["enrolled"] is False
    assert registration(now)["enrolled"] is True
    assert registration(now)["credentialValid"] is False  # not attested yet


def test_document_of_suspended_device(
    system: System, roles: Any, enrolled: Callable[..., LocalAccount]
) -> None:
    device = enrolled()
    system.client.transact(
        system.devices.functions.suspend(device.address), roles.registrar
    )

    entry = registration(build_did_document(system, device.address))

    assert entry["status"] == "suspended"
    assert entry["enrolled"] is True
    assert entry["credentialValid"] is False


def test_document_rejects_other_chain(system: System) -> None:
    did = f"did:ethr:0x1:{ADDRESS}"

    with pytest.raises(UsageError, match="chain id 1") as caught:
        build_did_document(system, did)

    assert repr(did) in str(caught.value)


def test_document_rejects_block_without_contracts(system: System) -> None:
    with pytest.raises(UsageError, match="no code at block 0"):
        build_did_document(system, ADDRESS, 0)


def test_document_rejects_future_block(system: System) -> None:
    future = system.client.w3.eth.block_number + 1_000

    with pytest.raises(UsageError, match="not found"):
        build_did_document(system, ADDRESS, future)


def test_revoked_delegate_leaves_document(
    system: System, enrolled: Callable[..., LocalAccount]
) -> None:
    device = enrolled(funded=True)
    first, second, third = new_key(), new_key(), new_key()
    add_delegate(system, device, device.address, "veriKey", first.address)
    add_delegate(system, device, device.address, "sigAuth", second.address)
    revoke_delegate(system, device, device.address, "veriKey", first.address)
    add_delegate(system, device, device.address, "veriKey", third.address)
    did = did_for(31337, device.address)

    document = build_did_document(system, device.address)

    # The revocation takes number 3, as in ethr-did-resolver, so the third is 4.
    methods = {m["id"]: m for m in document["verificationMethod"]}
    assert list(methods) == [
        f"{did}#controller",
        f"{did}#delegate-2",
        f"{did}#delegate-4",
    ]
    assert methods[f"{did}#delegate-2"]["blockchainAccountId"] == (
        f"eip155:31337:{second.address}"
    )
    assert methods[f"{did}#delegate-4"]["blockchainAccountId"] == (
        f"eip155:31337:{third.address}"
    )
    assert document["authentication"] == [f"{did}#controller", f"{did}#delegate-2"]
    assert document["assertionMethod"] == [
        f"{did}#controller",
        f"{did}#delegate-2",
        f"{did}#delegate-4",
    ]


def test_expired_attribute_leaves_document(
    system: System, enrolled: Callable[..., LocalAccount]
) -> None:
    device = enrolled(funded=True)
    set_attribute(
        system, device, device.address, "did/svc/Hub", b"https://hub.test", 100
    )
    set_attribute(
        system, device, device.address, "did/svc/Log", b"https://log.test", 10_000
    )
    later = chain_time(system) + 1_000
    did = did_for(31337, device.address)

    document = build_did_document(system, device.address, now=later)

    services = [s for s in document["service"] if s["type"] != "ZtfmDeviceRegistration"]
    assert services == [
        {"id": f"{did}#service-2", "type": "Log", "serviceEndpoint": "https://log.test"}
    ]
