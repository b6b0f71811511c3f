"""build_did_document compared with the npm ethr-did-resolver, run by Node."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from eth_account.signers.local import LocalAccount

from tests.chain.conftest import UPDATE_CID, new_key
from tests.identity.conftest import (
    Resolution,
    add_delegate,
    erc1056_part,
    set_attribute,
)
from ztfm_chain.chain.deploy import System
from ztfm_chain.identity import eip712, registrar
from ztfm_chain.identity.commitments import Commitment
from ztfm_chain.identity.did import NULL_ADDRESS, build_did_document, did_for

Resolve = Callable[..., Resolution]


def resolved_document(resolve_with_node: Resolve, did: str) -> dict[str, Any]:
    """Resolve ``did`` with the script and return its DID document."""
    resolution = resolve_with_node(did)
    assert resolution.returncode == 0, resolution.stderr
    assert resolution.result is not None
    assert "error" not in resolution.result["didResolutionMetadata"]
    document: dict[str, Any] = resolution.result["didDocument"]
    return document


def controller_account(document: dict[str, Any]) -> str:
    """Return the address in the ``#controller`` method's blockchainAccountId."""
    (method,) = [
        m for m in document["verificationMethod"] if m["id"].endswith("#controller")
    ]
    account: str = method["blockchainAccountId"]
    return account.rsplit(":", 1)[1]


def test_resolver_matches_enrolled_device(
    system: System,
    enrolled: Callable[..., LocalAccount],
    resolve_with_node: Resolve,
) -> None:
    device = enrolled()
    did = did_for(system.client.chain_id, device.address)

    ours = build_did_document(system, did)
    theirs = resolved_document(resolve_with_node, did)

    assert erc1056_part(ours) == theirs
    assert ours["verificationMethod"][0] == theirs["verificationMethod"][0]
    assert controller_account(theirs) == device.address


def test_resolver_matches_across_rotation(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    resolve_with_node: Resolve,
) -> None:
    old_key = enrolled()
    new = new_key()
    did = did_for(system.client.chain_id, old_key.address)
    before = system.client.w3.eth.block_number
    assert controller_account(resolved_document(resolve_with_node, did)) == (
        old_key.address
    )

    registrar.rotate_key(system, roles.registrar, old_key.address, old_key, new)
    ours = build_did_document(system, did)
    theirs = resolved_document(resolve_with_node, did)
    ours_before = build_did_document(system, did, before)
    theirs_before = resolved_document(resolve_with_node, f"{did}?versionId={before}")

    assert erc1056_part(ours) == theirs
    assert controller_account(ours) == new.address
    assert controller_account(theirs) == new.address
    assert ours["id"] == did
    assert erc1056_part(ours_before) == theirs_before
    assert controller_account(ours_before) == old_key.address


def test_old_key_signature_not_current_key(
    system: System,
    roles: Any,
    enrolled: Callable[..., LocalAccount],
    resolve_with_node: Resolve,
) -> None:
    old_key = enrolled()
    new = new_key()
    registrar.rotate_key(system, roles.registrar, old_key.address, old_key, new)
    did = did_for(system.client.chain_id, old_key.address)
    current = controller_account(resolved_document(resolve_with_node, did))
    message = Commitment(
        model_id=1,
        round=1,
        device=old_key.address,
        content_hash=hashlib.sha256(b"update").digest(),
        cid=UPDATE_CID,
        sample_count=100,
        base_model_hash=hashlib.sha256(b"base").digest(),
    ).message(
        chain_id=system.client.chain_id,
        model_registry=system.deployment.model_registry,
        nonce=0,
    )

    by_old_key = eip712.recover(message, eip712.sign(message, old_key))
    by_new_key = eip712.recover(message, eip712.sign(message, new))

    assert by_old_key == old_key.address
    assert by_old_key != current
    assert by_new_key == current
    assert controller_account(build_did_document(system, did)) == current


def test_resolver_matches_delegates_and_attributes(
    system: System,
    enrolled: Callable[..., LocalAccount],
    resolve_with_node: Resolve,
) -> None:
    device = enrolled(funded=True)
    delegate = new_key()
    endpoint = {"uri": "https://hub.test/device", "accept": ["didcomm/v2"]}
    add_delegate(system, device, device.address, "veriKey", delegate.address)
    set_attribute(
        system,
        device,
        device.address,
        "did/svc/MessagingService",
        json.dumps(endpoint).encode(),
    )
    # A leading zero byte checks the base58 encoder's padding.
    set_attribute(
        system,
        device,
        device.address,
        "did/pub/Ed25519/veriKey/base58",
        bytes(1) + bytes(range(1, 32)),
    )
    set_attribute(
        system,
        device,
        device.address,
        "did/pub/Secp256k1/sigAuth/hex",
        bytes.fromhex("02" + "ab" * 32),
    )
    did = did_for(system.client.chain_id, device.address)

    ours = build_did_document(system, did)
    theirs = resolved_document(resolve_with_node, did)

    assert erc1056_part(ours) == theirs
    methods = {m["id"]: m for m in ours["verificationMethod"]}
    assert methods[f"{did}#delegate-1"]["blockchainAccountId"] == (
        f"eip155:31337:{delegate.address}"
    )
    assert methods[f"{did}#delegate-2"]["type"] == "Ed25519VerificationKey2018"
    assert methods[f"{did}#delegate-3"]["publicKeyHex"] == "02" + "ab" * 32
    assert ours["authentication"] == [f"{did}#controller", f"{did}#delegate-3"]
    services = {s["id"]: s for s in ours["service"]}
    assert services[f"{did}#service-1"] == {
        "id": f"{did}#service-1",
        "type": "MessagingService",
        "serviceEndpoint": endpoint,
    }
    assert services[f"{did}#ztfm-registration"]["enrolled"] is True


def test_resolver_matches_deactivated_did(
    system: System,
    enrolled: Callable[..., LocalAccount],
    resolve_with_node: Resolve,
) -> None:
    device = enrolled(funded=True)
    system.client.transact(
        system.did_registry.functions.changeOwner(device.address, NULL_ADDRESS),
        device,
    )
    did = did_for(system.client.chain_id, device.address)

    ours = build_did_document(system, did)
    resolution = resolve_with_node(did)

    assert resolution.returncode == 0, resolution.stderr
    assert resolution.result is not None
    assert resolution.result["didDocumentMetadata"]["deactivated"] is True
    assert erc1056_part(ours) == resolution.result["didDocument"]
    assert ours["verificationMethod"] == []


def test_resolver_script_reports_errors(
    system: System, enrolled: Callable[..., LocalAccount], resolve_with_node: Resolve
) -> None:
    device = enrolled()
    did = did_for(system.client.chain_id, device.address)

    wrong_registry = resolve_with_node(did, registry=system.deployment.device_registry)
    malformed = resolve_with_node("did:ethr:0x7a69:0x1234")

    assert wrong_registry.returncode == 1
    assert wrong_registry.result is not None
    assert wrong_registry.result["didResolutionMetadata"]["error"] == "notFound"
    assert wrong_registry.result["didDocument"] is None
    assert malformed.returncode == 1
    assert malformed.result is not None
    assert malformed.result["didResolutionMetadata"]["error"] == "invalidDid"
    assert "cannot resolve did:ethr:0x7a69:0x1234" in malformed.stderr
