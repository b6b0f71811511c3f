"""Update commitments: build, sign, verify and submit them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3.types import TxReceipt

from ztfm_chain.chain.deploy import System
from ztfm_chain.identity import eip712


@dataclass(frozen=True)
class Commitment:
    """One device's commitment to one model update, as the ModelRegistry takes it."""

    model_id: int
    round: int
    device: ChecksumAddress
    content_hash: bytes
    cid: str
    sample_count: int
    base_model_hash: bytes

    def as_tuple(self) -> tuple[Any, ...]:
        """Return the struct as the ABI encoder takes it."""
        return (
            self.model_id,
            self.round,
            self.device,
            self.content_hash,
            self.cid,
            self.sample_count,
            self.base_model_hash,
        )

    def message(
        self, *, chain_id: int, model_registry: str, nonce: int
    ) -> dict[str, Any]:
        """Return the EIP-712 message for this commitment with ``nonce``."""
        return eip712.commitment_message(
            chain_id=chain_id,
            model_registry=model_registry,
            nonce=nonce,
            **self._signed_fields(),
        )

    def digest(self, *, chain_id: int, model_registry: str, nonce: int) -> bytes:
        """Return the 32-byte EIP-712 digest a device signs for this commitment."""
        return eip712.commitment_digest(
            chain_id=chain_id,
            model_registry=model_registry,
            nonce=nonce,
            **self._signed_fields(),
        )

    def _signed_fields(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "round": self.round,
            "device": self.device,
            "content_hash": self.content_hash,
            "cid": self.cid,
            "sample_count": self.sample_count,
            "base_model_hash": self.base_model_hash,
        }


def current_nonce(system: System, device: str) -> int:
    """Return the nonce the device's next commitment consumes."""
    record = system.client.call(system.devices.functions.deviceOf(device))
    return int(record[5])


def sign_commitment(
    system: System,
    key: LocalAccount,
    commitment: Commitment,
    *,
    nonce: int | None = None,
) -> bytes:
    """Sign a commitment with the device's current key, for a relayer to submit."""
    if nonce is None:
        nonce = current_nonce(system, commitment.device)
    message = commitment.message(
        chain_id=system.client.chain_id,
        model_registry=system.deployment.model_registry,
        nonce=nonce,
    )
    return eip712.sign(message, key)


def submit(
    system: System,
    sender: LocalAccount,
    commitment: Commitment,
    signature: bytes | None = None,
) -> TxReceipt:
    """Submit a commitment: directly (sender is the device key) or relayed."""
    if signature is None:
        fn = system.models.functions.commitUpdate(commitment.as_tuple())
    else:
        fn = system.models.functions.commitUpdateFor(commitment.as_tuple(), signature)
    return system.client.transact(fn, sender)
