"""Deploy the contracts, write a manifest per chain and connect to a deployment.

A manifest records the chain id, the genesis block hash and every address. Connecting
checks all three, so a wrong chain or a restarted dev chain raises
:class:`~ztfm_chain.exceptions.ChainMismatch` before anything is called. Anvil builds the
same genesis block on every start with the same settings; there the missing contract
code is what gives a restart away.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract import Contract

from ztfm_chain.chain.artifacts import load_artifact
from ztfm_chain.chain.client import ChainClient
from ztfm_chain.exceptions import ChainMismatch, ConfigError

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
#: Trust score, in basis points, of a device no aggregator has scored yet.
DEFAULT_INITIAL_TRUST = 5_000


@dataclass(frozen=True)
class RoleHolders:
    """Accounts that receive each role at deployment. Keep them distinct."""

    registrar: ChecksumAddress
    attestor: ChecksumAddress
    model_manager: ChecksumAddress
    aggregators: tuple[ChecksumAddress, ...]


@dataclass(frozen=True)
class Deployment:
    """Where the contracts of one deployment live, and on which chain."""

    chain_id: int
    genesis_hash: str
    did_registry: ChecksumAddress
    device_registry: ChecksumAddress
    trust_registry: ChecksumAddress
    model_registry: ChecksumAddress
    deployed_at_block: int
    admin: ChecksumAddress
    roles: dict[str, list[str]] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    def addresses(self) -> dict[str, ChecksumAddress]:
        """Return each contract's name and address."""
        return {
            "EthereumDIDRegistry": self.did_registry,
            "DeviceRegistry": self.device_registry,
            "TrustRegistry": self.trust_registry,
            "ModelRegistry": self.model_registry,
        }

    def to_json(self) -> str:
        """Serialise the manifest."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "manifest") -> Deployment:
        """Parse a manifest, raising :class:`ConfigError` naming what is wrong."""
        try:
            data: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source} is not valid JSON: {exc}") from None
        if data.get("version") != MANIFEST_VERSION:
            raise ConfigError(
                f"{source} has manifest version {data.get('version')!r}; "
                f"expected {MANIFEST_VERSION}"
            )
        try:
            return cls(
                chain_id=int(data["chain_id"]),
                genesis_hash=str(data["genesis_hash"]),
                did_registry=Web3.to_checksum_address(data["did_registry"]),
                device_registry=Web3.to_checksum_address(data["device_registry"]),
                trust_registry=Web3.to_checksum_address(data["trust_registry"]),
                model_registry=Web3.to_checksum_address(data["model_registry"]),
                deployed_at_block=int(data["deployed_at_block"]),
                admin=Web3.to_checksum_address(data["admin"]),
                roles={k: list(v) for k, v in data.get("roles", {}).items()},
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"{source} is missing or has an invalid field: {exc}"
            ) from None


class System:
    """The deployed contracts on a checked chain, as web3 contract objects."""

    def __init__(self, client: ChainClient, deployment: Deployment) -> None:
        self.client = client
        self.deployment = deployment
        self.did_registry: Contract = client.contract(
            "EthereumDIDRegistry", deployment.did_registry
        )
        self.devices: Contract = client.contract(
            "DeviceRegistry", deployment.device_registry
        )
        self.trust: Contract = client.contract(
            "TrustRegistry", deployment.trust_registry
        )
        self.models: Contract = client.contract(
            "ModelRegistry", deployment.model_registry
        )


def deploy(
    client: ChainClient,
    admin: LocalAccount,
    roles: RoleHolders,
    *,
    initial_trust: int = DEFAULT_INITIAL_TRUST,
) -> Deployment:
    """Deploy the ERC-1056 registry and the three registries, wire and grant roles.

    The admin keeps DEFAULT_ADMIN_ROLE everywhere and no other role; each other role
    goes to its own account.
    """
    start_block = client.read(lambda: client.w3.eth.block_number) + 1
    did = _deploy_one(client, admin, "EthereumDIDRegistry")
    devices = _deploy_one(client, admin, "DeviceRegistry", did.address, admin.address)
    trust = _deploy_one(client, admin, "TrustRegistry", admin.address, initial_trust)
    models = _deploy_one(
        client, admin, "ModelRegistry", devices.address, trust.address, admin.address
    )
    client.transact(trust.functions.bindModelRegistry(models.address), admin)
    grants: list[tuple[Contract, str, str]] = [
        (devices, "REGISTRAR_ROLE", roles.registrar),
        (devices, "ATTESTOR_ROLE", roles.attestor),
        (models, "MODEL_MANAGER_ROLE", roles.model_manager),
    ]
    grants += [(models, "AGGREGATOR_ROLE", a) for a in roles.aggregators]
    for contract, role_name, account in grants:
        role = client.call(getattr(contract.functions, role_name)())
        client.transact(contract.functions.grantRole(role, account), admin)
    deployment = Deployment(
        chain_id=client.chain_id,
        genesis_hash=client.genesis_hash(),
        did_registry=did.address,
        device_registry=devices.address,
        trust_registry=trust.address,
        model_registry=models.address,
        deployed_at_block=start_block,
        admin=admin.address,
        roles={
            "REGISTRAR_ROLE": [roles.registrar],
            "ATTESTOR_ROLE": [roles.attestor],
            "MODEL_MANAGER_ROLE": [roles.model_manager],
            "AGGREGATOR_ROLE": list(roles.aggregators),
        },
    )
    log.info(
        "deploy.done chain_id=%s device_registry=%s model_registry=%s trust_registry=%s",
        deployment.chain_id,
        deployment.device_registry,
        deployment.model_registry,
        deployment.trust_registry,
    )
    return deployment


def connect(client: ChainClient, deployment: Deployment) -> System:
    """Check that ``client`` is on the manifest's chain and return the contracts.

    Raises :class:`ChainMismatch` on another chain id or genesis block, or when an
    address has no code.
    """
    if client.chain_id != deployment.chain_id:
        raise ChainMismatch(
            f"{client.url} is chain id {client.chain_id}, but the deployment is on "
            f"chain id {deployment.chain_id}; point to the right RPC URL or deploy again"
        )
    genesis = client.genesis_hash()
    if genesis.lower() != deployment.genesis_hash.lower():
        raise ChainMismatch(
            f"{client.url} has genesis block {genesis}, but the deployment was made on "
            f"{deployment.genesis_hash}: the chain was restarted or replaced; "
            "deploy again"
        )
    for name, address in deployment.addresses().items():
        if not client.has_code(address):
            raise ChainMismatch(
                f"no contract code at {name} address {address} on {client.url}; "
                "the chain was reset or the manifest is wrong; deploy again"
            )
    return System(client, deployment)


def manifest_path(directory: Path, chain_id: int) -> Path:
    """Return the manifest file of ``chain_id`` under ``directory``."""
    return directory / "deployments" / f"{chain_id}.json"


def save_manifest(deployment: Deployment, directory: Path) -> Path:
    """Write the manifest atomically and return its path."""
    path = manifest_path(directory, deployment.chain_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(deployment.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_manifest(path: Path) -> Deployment:
    """Read a manifest written by :func:`save_manifest`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"deployment manifest {path} not found; run `ztfm deploy` first"
        ) from None
    return Deployment.from_json(text, source=str(path))


def _deploy_one(
    client: ChainClient, admin: LocalAccount, name: str, *args: Any
) -> Contract:
    artifact = load_artifact(name)
    factory = client.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = client.transact(factory.constructor(*args), admin)
    address = receipt["contractAddress"]
    if address is None:
        raise ChainMismatch(f"deploying {name} returned no contract address")
    log.info(
        "deploy.contract name=%s address=%s gas=%s", name, address, receipt["gasUsed"]
    )
    return client.contract(name, address)
