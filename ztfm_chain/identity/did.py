"""``did:ethr`` identifiers of devices and their DID documents, built from chain state.

A device's DID is ``did:ethr:0x<chain id in hex>:<identity address>``. The identity
address never changes; the device's current signing key is the identity's ERC-1056
owner (``identityOwner``), which a key rotation changes.

:func:`build_did_document` reads the ERC-1056 registry the way the npm
``ethr-did-resolver`` 11.1.3 does in its ``changeLog`` and ``wrapDidDocument``. It walks
the identity's events backwards through the registry's ``changed(identity)`` block
pointers. It then replays them to build the ``#controller`` verification method, the
delegates (``#delegate-N``) and the ``did/pub`` and ``did/svc`` attributes
(``#delegate-N``, ``#service-N``). The document also gets one service entry of type
``ZtfmDeviceRegistration`` with the device's DeviceRegistry record. Without that entry
the document equals the resolver's ``didDocument`` for the same DID, except for the
differences noted at :func:`build_did_document`.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from eth_typing import ChecksumAddress, HexAddress, HexStr
from eth_utils.address import is_checksum_address, is_hex_address, to_checksum_address
from web3.exceptions import BlockNotFound
from web3.types import BlockIdentifier, FilterParams, LogReceipt

from ztfm_chain.chain.deploy import System
from ztfm_chain.exceptions import ChainError, UsageError
from ztfm_chain.identity.registrar import DeviceStatus, device_record

log = logging.getLogger(__name__)

DID_PREFIX = "did:ethr:"
#: The JSON-LD contexts ethr-did-resolver 11.1.3 puts in a ``did+ld+json`` document.
LD_CONTEXT = (
    "https://www.w3.org/ns/did/v1",
    "https://w3id.org/security/suites/secp256k1recovery-2020/v2",
    "https://w3id.org/security/v3-unstable",
)
#: Verification method type of the controller and of ``veriKey``/``sigAuth`` delegates.
RECOVERY_METHOD_TYPE = "EcdsaSecp256k1RecoveryMethod2020"
#: Service type of the entry that carries the DeviceRegistry record.
REGISTRATION_SERVICE_TYPE = "ZtfmDeviceRegistration"
#: Fragment of that entry's id: ``<did>#ztfm-registration``.
REGISTRATION_FRAGMENT = "ztfm-registration"
#: Chain id of a ``did:ethr:<address>`` DID, which names no network (Ethereum mainnet).
MAINNET_CHAIN_ID = 1

NULL_ADDRESS = ChecksumAddress(HexAddress(HexStr("0x" + "00" * 20)))

OWNER_CHANGED = "DIDOwnerChanged"
DELEGATE_CHANGED = "DIDDelegateChanged"
ATTRIBUTE_CHANGED = "DIDAttributeChanged"
_REGISTRY_EVENTS = (OWNER_CHANGED, DELEGATE_CHANGED, ATTRIBUTE_CHANGED)

# The network part is a lower-case hex chain id without leading zeros, the only form
# of a numeric network that ethr-did-resolver 11.1.3 finds in its configuration.
_DID_PATTERN = re.compile(
    r"did:ethr:(?:(?P<network>[^:]*):)?(?P<identifier>[^:]*)", re.ASCII
)
_CHAIN_ID_PATTERN = re.compile(r"0x[1-9a-f][0-9a-f]*", re.ASCII)
_PUBLIC_KEY_PATTERN = re.compile(r"0x[0-9a-fA-F]{66}", re.ASCII)
# ethr-did-resolver's attribute name pattern; JavaScript's \w is ASCII-only.
_ATTRIBUTE_NAME = re.compile(r"did/(pub|svc)/(\w+)(/(\w+))?(/(\w+))?", re.ASCII)

# Attribute key purposes and legacy key type names, as ethr-did-resolver maps them.
_LEGACY_ATTRIBUTE_TYPES = {
    "sigAuth": "SignatureAuthentication2018",
    "veriKey": "VerificationKey2018",
    "enc": "KeyAgreementKey2019",
}
_LEGACY_ALGORITHMS = {
    "Secp256k1VerificationKey2018": "EcdsaSecp256k1VerificationKey2019",
    "Ed25519SignatureAuthentication2018": "Ed25519VerificationKey2018",
    "Secp256k1SignatureAuthentication2018": "EcdsaSecp256k1VerificationKey2019",
    "RSAVerificationKey2018": "RSAVerificationKey2018",
    "Ed25519VerificationKey2018": "Ed25519VerificationKey2018",
    "X25519KeyAgreementKey2019": "X25519KeyAgreementKey2019",
}
_BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


# ---------------------------------------------------------------------------------
# Identifiers
# ---------------------------------------------------------------------------------


def did_for(chain_id: int, address: str) -> str:
    """Return the DID ``did:ethr:0x<chain id hex>:<checksum address>``."""
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id < 1:
        raise UsageError(f"chain id must be a positive integer, got {chain_id!r}")
    if not _is_address(address):
        raise UsageError(
            f"invalid address {address!r}: expected 0x and 40 hex digits with a "
            "valid EIP-55 checksum, or all in one case"
        )
    return f"{DID_PREFIX}{hex(chain_id)}:{to_checksum_address(address)}"


def parse_did(did: str) -> tuple[int, ChecksumAddress]:
    """Return the chain id and identity address of a ``did:ethr`` DID.

    Accepts ``did:ethr:0x<chain id hex>:<address>`` and ``did:ethr:<address>``
    (Ethereum mainnet, chain id 1). Raises :class:`UsageError` naming the value for
    anything else, including DID URLs, named networks and public-key identifiers.
    """
    match = _DID_PATTERN.fullmatch(did) if isinstance(did, str) else None
    if match is None:
        raise UsageError(
            f"invalid DID {did!r}: expected did:ethr:0x<chain id hex>:<address> "
            "without a path, query or fragment"
        )
    network, identifier = match.group("network"), match.group("identifier")
    if network is None:
        chain_id = MAINNET_CHAIN_ID
    elif _CHAIN_ID_PATTERN.fullmatch(network):
        chain_id = int(network, 16)
    else:
        raise UsageError(
            f"invalid DID {did!r}: network {network!r} is not a lower-case hex chain "
            "id without leading zeros, such as 0x7a69; named networks are not "
            "supported"
        )
    if _PUBLIC_KEY_PATTERN.fullmatch(identifier):
        raise UsageError(
            f"unsupported DID {did!r}: public-key identifiers are not supported; use "
            "the identity address"
        )
    if not _is_address(identifier):
        raise UsageError(
            f"invalid DID {did!r}: identifier {identifier!r} is not an address (0x "
            "and 40 hex digits, with a valid EIP-55 checksum when in mixed case)"
        )
    return chain_id, to_checksum_address(identifier)


def _is_address(value: object) -> bool:
    if not isinstance(value, str) or not value.startswith("0x"):
        return False
    if not is_hex_address(value):
        return False
    digits = value[2:]
    if digits.lower() == digits or digits.upper() == digits:
        return True
    return bool(is_checksum_address(value))


# ---------------------------------------------------------------------------------
# ERC-1056 history
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryChange:
    """One ERC-1056 event about an identity, decoded as ethr-did-resolver does.

    ``delegate_type`` and ``name`` are the bytes32 fields as UTF-8 text without
    trailing NUL bytes. ``valid_to`` is zero for owner changes.
    """

    event: str
    block_number: int
    owner: ChecksumAddress | None = None
    delegate_type: str | None = None
    delegate: ChecksumAddress | None = None
    name: str | None = None
    value: bytes | None = None
    valid_to: int = 0

    def key(self) -> tuple[str, str | None, str | bytes | None]:
        """Return what identifies a delegate or attribute across its changes."""
        if self.event == DELEGATE_CHANGED:
            return (self.event, self.delegate_type, self.delegate)
        return (self.event, self.name, self.value)


def registry_changes(
    system: System, identity: str, block_number: int
) -> list[RegistryChange]:
    """Return the ERC-1056 events of ``identity`` up to ``block_number``, oldest first.

    Follows the registry's ``changed(identity)`` pointer and each event's
    ``previousChange`` back to the first change. Events whose bytes32 field is not
    UTF-8 are left out, as ethr-did-resolver leaves them out. Raises
    :class:`ChainError` when the node returns no logs for a block the registry points
    to, as a node that pruned its logs does.
    """
    client = system.client
    registry = system.did_registry
    identity = to_checksum_address(identity)
    events = {
        bytes.fromhex(_event(system, name).topic[2:]): name for name in _REGISTRY_EVENTS
    }
    identity_topic = HexStr("0x" + "00" * 12 + identity[2:].lower())
    blocks: list[list[RegistryChange]] = []
    change = int(client.call(registry.functions.changed(identity), block_number))
    while change:
        params: FilterParams = {
            "address": registry.address,
            "topics": [None, identity_topic],
            "fromBlock": change,
            "toBlock": change,
        }
        logs = client.read(functools.partial(client.w3.eth.get_logs, params))
        if not logs:
            raise ChainError(
                f"the node at {client.url} returned no ERC-1056 logs for block "
                f"{change}, where the registry records a change of {identity}. The "
                "node may have pruned old logs: use one that keeps them (an archive "
                "node)"
            )
        decoded, previous = _decode_block(system, events, logs, change)
        blocks.append(decoded)
        change = previous
    return [event for decoded in reversed(blocks) for event in decoded]


def _event(system: System, name: str) -> Any:
    return getattr(system.did_registry.events, name)()


def _decode_block(
    system: System,
    events: dict[bytes, str],
    logs: list[LogReceipt],
    block_number: int,
) -> tuple[list[RegistryChange], int]:
    """Decode one block's logs; return them and the earliest earlier change block."""
    changes: list[RegistryChange] = []
    previous = 0
    for entry in logs:
        name = events.get(bytes(entry["topics"][0])) if entry["topics"] else None
        if name is None:
            continue
        args = _event(system, name).process_log(entry)["args"]
        pointer = int(args["previousChange"])
        if 0 < pointer < block_number and (previous == 0 or pointer < previous):
            previous = pointer
        change = _change_from_args(name, int(entry["blockNumber"]), args)
        if change is not None:
            changes.append(change)
    return changes, previous


def _change_from_args(name: str, block_number: int, args: Any) -> RegistryChange | None:
    if name == OWNER_CHANGED:
        return RegistryChange(
            name, block_number, owner=to_checksum_address(args["owner"])
        )
    if name == DELEGATE_CHANGED:
        delegate_type = _bytes32_text(args["delegateType"])
        if delegate_type is None:
            return None
        return RegistryChange(
            name,
            block_number,
            delegate_type=delegate_type,
            delegate=to_checksum_address(args["delegate"]),
            valid_to=int(args["validTo"]),
        )
    attribute = _bytes32_text(args["name"])
    if attribute is None:
        return None
    return RegistryChange(
        name,
        block_number,
        name=attribute,
        value=bytes(args["value"]),
        valid_to=int(args["validTo"]),
    )


def _bytes32_text(raw: bytes) -> str | None:
    try:
        return bytes(raw).decode("utf-8").rstrip("\0")
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------------------------
# DID document
# ---------------------------------------------------------------------------------


def build_did_document(
    system: System,
    did_or_address: str,
    block: BlockIdentifier = "latest",
    *,
    now: int | None = None,
) -> dict[str, Any]:
    """Build the DID document of a device from the chain state at ``block``.

    ``did_or_address`` is a DID on this chain or an identity address. Delegates and
    attributes count as valid while their ``validTo`` is later than ``now``, which
    defaults to the block's timestamp, as the registry's ``validDelegate`` checks.
    ethr-did-resolver 11.1.3 differs in two ways. It checks ``validTo >= now``
    against the wall clock for ``latest``. It also keeps a revoked ``enc`` key in
    ``keyAgreement``, which this function drops. Raises :class:`UsageError` for a
    malformed DID, a DID of another chain or a block without the contracts.
    """
    did, identity = _did_and_identity(system, did_or_address)
    number, timestamp = _block_number_and_time(system, block)
    _check_deployed(system, number)
    history = registry_changes(system, identity, number)
    owner = ChecksumAddress(
        system.client.call(
            system.did_registry.functions.identityOwner(identity), number
        )
    )
    document = _erc1056_document(
        did,
        identity,
        owner,
        system.client.chain_id,
        history,
        timestamp if now is None else now,
    )
    document.setdefault("service", []).append(
        _registration_service(system, did, identity, number, timestamp)
    )
    log.debug(
        "did.document did=%s block=%s owner=%s changes=%s",
        did,
        number,
        owner,
        len(history),
    )
    return document


def _did_and_identity(
    system: System, did_or_address: str
) -> tuple[str, ChecksumAddress]:
    chain_id = system.client.chain_id
    if isinstance(did_or_address, str) and did_or_address.startswith("did:"):
        did_chain, identity = parse_did(did_or_address)
        if did_chain != chain_id:
            raise UsageError(
                f"DID {did_or_address!r} names chain id {did_chain}, but the node at "
                f"{system.client.url} is chain id {chain_id}; connect to that chain"
            )
        return did_or_address, identity
    did = did_for(chain_id, did_or_address)
    return did, to_checksum_address(did_or_address)


def _block_number_and_time(system: System, block: BlockIdentifier) -> tuple[int, int]:
    client = system.client
    try:
        header = client.read(lambda: client.w3.eth.get_block(block))
    except BlockNotFound:
        raise UsageError(f"block {block!r} not found on {client.url}") from None
    return int(header["number"]), int(header["timestamp"])


def _check_deployed(system: System, block_number: int) -> None:
    client = system.client
    for name, address in (
        ("EthereumDIDRegistry", system.deployment.did_registry),
        ("DeviceRegistry", system.deployment.device_registry),
    ):
        code = client.read(
            functools.partial(client.w3.eth.get_code, address, block_number)
        )
        if not code:
            raise UsageError(
                f"{name} at {address} has no code at block {block_number}; choose a "
                f"block from {system.deployment.deployed_at_block} on"
            )


def _erc1056_document(
    did: str,
    identity: ChecksumAddress,
    owner: ChecksumAddress,
    chain_id: int,
    history: list[RegistryChange],
    now: int,
) -> dict[str, Any]:
    """Replay the identity's ERC-1056 history into the resolver's document shape."""
    state = _DocumentState(did, chain_id)
    controller = identity
    for change in history:
        if change.event == OWNER_CHANGED:
            assert change.owner is not None
            controller = change.owner
            if controller == NULL_ADDRESS:
                # An owner of zero deactivates the DID, and later events are ignored.
                return _base_document(did)
        elif change.valid_to > now:
            state.add(change)
        else:
            state.remove(change)
    if controller != owner:
        raise ChainError(
            f"the ERC-1056 events of {identity} end with owner {controller}, but "
            f"identityOwner returns {owner}; the node's logs are incomplete"
        )
    return state.document(owner)


def _base_document(did: str) -> dict[str, Any]:
    return {
        "@context": list(LD_CONTEXT),
        "id": did,
        "verificationMethod": [],
        "authentication": [],
        "assertionMethod": [],
    }


Key = tuple[str, str | None, str | bytes | None]


@dataclass
class _DocumentState:
    """Verification methods and references collected while replaying the history.

    Each dict is keyed by :meth:`RegistryChange.key` and keeps insertion order, as the
    resolver's JavaScript objects do, so later changes of one entry keep its place.
    """

    did: str
    chain_id: int
    delegate_count: int = 0
    service_count: int = 0
    methods: dict[Key, dict[str, Any]] = field(default_factory=dict)
    authentication: dict[Key, str] = field(default_factory=dict)
    assertion: dict[Key, str] = field(default_factory=dict)
    key_agreement: dict[Key, str] = field(default_factory=dict)
    services: dict[Key, dict[str, Any]] = field(default_factory=dict)

    def add(self, change: RegistryChange) -> None:
        """Add a delegate or attribute that is valid now."""
        if change.event == DELEGATE_CHANGED:
            self._add_delegate(change)
            return
        assert change.name is not None and change.value is not None
        match = _ATTRIBUTE_NAME.fullmatch(change.name)
        if match is None:
            return
        if match.group(1) == "pub":
            self._add_public_key(change, match)
        else:
            self._add_service(change, match.group(2))

    def remove(self, change: RegistryChange) -> None:
        """Remove an expired or revoked delegate or attribute.

        Numbering still advances, so the ids of the other entries stay stable.
        """
        name = change.name or ""
        if change.event == DELEGATE_CHANGED or name.startswith("did/pub/"):
            self.delegate_count += 1
        elif name.startswith("did/svc/"):
            self.service_count += 1
        key = change.key()
        for refs in (
            self.methods,
            self.authentication,
            self.assertion,
            self.key_agreement,
            self.services,
        ):
            refs.pop(key, None)

    def document(self, controller: ChecksumAddress) -> dict[str, Any]:
        """Return the DID document with ``controller`` as the ``#controller`` key."""
        controller_ref = f"{self.did}#controller"
        document: dict[str, Any] = {
            "@context": list(LD_CONTEXT),
            "id": self.did,
            "verificationMethod": [
                {
                    "id": controller_ref,
                    "type": RECOVERY_METHOD_TYPE,
                    "controller": self.did,
                    "blockchainAccountId": f"eip155:{self.chain_id}:{controller}",
                },
                *self.methods.values(),
            ],
            "authentication": [controller_ref, *self.authentication.values()],
            "assertionMethod": [controller_ref, *self.assertion.values()],
        }
        if self.services:
            document["service"] = list(self.services.values())
        if self.key_agreement:
            document["keyAgreement"] = list(self.key_agreement.values())
        return document

    def _add_delegate(self, change: RegistryChange) -> None:
        # Every valid delegate takes a number, even of a type that adds no method.
        self.delegate_count += 1
        if change.delegate_type not in ("sigAuth", "veriKey"):
            return
        key = change.key()
        ref = f"{self.did}#delegate-{self.delegate_count}"
        if change.delegate_type == "sigAuth":
            self.authentication[key] = ref
        self.methods[key] = {
            "id": ref,
            "type": RECOVERY_METHOD_TYPE,
            "controller": self.did,
            "blockchainAccountId": f"eip155:{self.chain_id}:{change.delegate}",
        }
        self.assertion[key] = ref

    def _add_public_key(self, change: RegistryChange, match: re.Match[str]) -> None:
        self.delegate_count += 1
        assert change.value is not None
        algorithm, purpose, encoding = match.group(2), match.group(4), match.group(6)
        legacy_type = _LEGACY_ATTRIBUTE_TYPES.get(purpose or "", purpose or "undefined")
        ref = f"{self.did}#delegate-{self.delegate_count}"
        method: dict[str, Any] = {
            "id": ref,
            "type": _LEGACY_ALGORITHMS.get(f"{algorithm}{legacy_type}", algorithm),
            "controller": self.did,
        }
        if encoding in (None, "hex"):
            method["publicKeyHex"] = change.value.hex()
        elif encoding == "base64":
            method["publicKeyBase64"] = base64.b64encode(change.value).decode()
        elif encoding == "base58":
            method["publicKeyBase58"] = _base58(change.value)
        elif encoding == "pem":
            try:
                method["publicKeyPem"] = change.value.decode("utf-8")
            except UnicodeDecodeError:
                return
        else:
            method["value"] = change.value.hex()
        key = change.key()
        self.methods[key] = method
        if purpose == "sigAuth":
            self.authentication[key] = ref
            self.assertion[key] = ref
        elif purpose == "enc":
            self.key_agreement[key] = ref
        else:
            self.assertion[key] = ref

    def _add_service(self, change: RegistryChange, service_type: str) -> None:
        self.service_count += 1
        assert change.value is not None
        try:
            text = change.value.decode("utf-8")
        except UnicodeDecodeError:
            return
        endpoint: Any
        try:
            endpoint = json.loads(text, parse_constant=_reject_constant)
        except ValueError:
            endpoint = text
        self.services[change.key()] = {
            "id": f"{self.did}#service-{self.service_count}",
            "type": service_type,
            "serviceEndpoint": endpoint,
        }


def _reject_constant(name: str) -> Any:
    # JSON.parse rejects NaN and Infinity, which Python's json module accepts.
    raise ValueError(f"{name} is not JSON")


def _base58(data: bytes) -> str:
    """Encode ``data`` in Bitcoin's base58 alphabet, one ``1`` per leading zero byte."""
    value = int.from_bytes(data, "big")
    digits = ""
    while value:
        value, remainder = divmod(value, 58)
        digits = _BASE58_ALPHABET[remainder] + digits
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + digits


# ---------------------------------------------------------------------------------
# DeviceRegistry service entry
# ---------------------------------------------------------------------------------


def _registration_service(
    system: System,
    did: str,
    identity: ChecksumAddress,
    block_number: int,
    timestamp: int,
) -> dict[str, Any]:
    """Return the service entry with the device's DeviceRegistry record at the block."""
    client = system.client
    devices = system.devices
    record = device_record(system, identity, block_number)
    measurement = bytes(
        client.call(devices.functions.measurementOf(identity), block_number)
    )
    metadata_hash = bytes(
        client.call(devices.functions.metadataHashOf(identity), block_number)
    )
    return {
        "id": f"{did}#{REGISTRATION_FRAGMENT}",
        "type": REGISTRATION_SERVICE_TYPE,
        # CAIP-10 account id of the DeviceRegistry that stores the record.
        "serviceEndpoint": (
            f"eip155:{client.chain_id}:{system.deployment.device_registry}"
        ),
        "enrolled": record.status != DeviceStatus.NONE,
        "status": record.status.name.lower(),
        "roles": record.roles,
        "segment": record.segment,
        "attestedAt": record.attested_at,
        "credentialExpiresAt": record.credential_expires_at,
        # The contract's isCredentialValid, evaluated at this block's timestamp.
        "credentialValid": record.status == DeviceStatus.ACTIVE
        and record.credential_expires_at > timestamp,
        "measurement": "0x" + measurement.hex(),
        "metadataCidHash": "0x" + metadata_hash.hex(),
    }
