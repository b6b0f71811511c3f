"""Fixtures for the identity tests: the Node resolver script and ERC-1056 helpers."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3.types import TxReceipt

from tests.chain.conftest import enrolled  # noqa: F401 (fixture used by the tests)
from ztfm_chain.chain.deploy import System
from ztfm_chain.identity.did import REGISTRATION_SERVICE_TYPE

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RESOLVE_SCRIPT = PROJECT_ROOT / "scripts" / "resolve-did.js"
#: Seconds the resolver script may take before the test fails.
NODE_TIMEOUT = 60


@dataclass(frozen=True)
class Resolution:
    """What ``scripts/resolve-did.js`` printed and returned."""

    returncode: int
    result: dict[str, Any] | None
    stderr: str


@pytest.fixture(scope="session")
def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; the resolver tests need Node 20 or later")
    return node


@pytest.fixture
def resolve_with_node(system: System, node_binary: str) -> Callable[..., Resolution]:
    """Run the ethr-did-resolver script against the session's loopback chain."""
    url = system.client.url
    assert url.startswith("http://127.0.0.1:"), f"not a loopback chain: {url}"

    def run(did: str, *, registry: str | None = None) -> Resolution:
        completed = subprocess.run(
            [
                node_binary,
                str(RESOLVE_SCRIPT),
                url,
                registry or system.deployment.did_registry,
                did,
            ],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
            check=False,
        )
        result = json.loads(completed.stdout) if completed.stdout.strip() else None
        return Resolution(completed.returncode, result, completed.stderr)

    return run


def erc1056_part(document: dict[str, Any]) -> dict[str, Any]:
    """Return ``document`` without its ZtfmDeviceRegistration service entry."""
    services = [
        service
        for service in document.get("service", [])
        if service["type"] != REGISTRATION_SERVICE_TYPE
    ]
    rest = {key: value for key, value in document.items() if key != "service"}
    if services:
        rest["service"] = services
    return rest


def bytes32(text: str) -> bytes:
    """Encode an ERC-1056 delegate type or attribute name as bytes32."""
    raw = text.encode()
    assert len(raw) <= 32, f"{text!r} is longer than 32 bytes"
    return raw.ljust(32, b"\0")


def add_delegate(
    system: System,
    owner: LocalAccount,
    identity: str,
    delegate_type: str,
    delegate: str,
    validity: int = 86_400,
) -> TxReceipt:
    """Add an ERC-1056 delegate, signed by the identity's current owner."""
    return system.client.transact(
        system.did_registry.functions.addDelegate(
            identity, bytes32(delegate_type), delegate, validity
        ),
        owner,
    )


def revoke_delegate(
    system: System,
    owner: LocalAccount,
    identity: str,
    delegate_type: str,
    delegate: str,
) -> TxReceipt:
    return system.client.transact(
        system.did_registry.functions.revokeDelegate(
            identity, bytes32(delegate_type), delegate
        ),
        owner,
    )


def set_attribute(
    system: System,
    owner: LocalAccount,
    identity: str,
    name: str,
    value: bytes,
    validity: int = 86_400,
) -> TxReceipt:
    """Set an ERC-1056 attribute, signed by the identity's current owner."""
    return system.client.transact(
        system.did_registry.functions.setAttribute(
            identity, bytes32(name), value, validity
        ),
        owner,
    )
