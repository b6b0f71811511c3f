"""The device side of a round: fetch, train, store, sign, submit.

A :class:`DeviceRuntime` holds one device's key and local data. :meth:`run_round`
fetches the round's global model and checks its hash against the chain, trains on the
local data, encodes the update (safetensors), stores it, signs the EIP-712 commitment
and submits it, either from the device's own key or through a relayer that pays gas.
Each failure raises :class:`DeviceStepError` naming the step and the value.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3 import Web3

from ztfm_chain.chain.deploy import System
from ztfm_chain.chain.models import RoundState, model_info, round_info
from ztfm_chain.exceptions import OperationalError, ZtfmError
from ztfm_chain.fl.training import train_local
from ztfm_chain.globalmodel import GlobalModel, fetch_base_model, fetch_round_base
from ztfm_chain.identity.commitments import Commitment, sign_commitment, submit
from ztfm_chain.storage.base import Store
from ztfm_chain.updates import ModelSchema, UpdateMeta, encode_update

log = logging.getLogger(__name__)

#: Optional change applied to the trained delta before encoding; tests and the demo
#: use it to play a poisoning device.
DeltaTransform = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class DeviceStepError(OperationalError):
    """One step of a device's round failed; ``step`` names it."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


@dataclass(frozen=True)
class TrainingSettings:
    """Local training hyperparameters."""

    epochs: int = 2
    batch_size: int = 16
    lr: float = 0.1


@dataclass(frozen=True)
class SubmittedUpdate:
    """What a device committed to in one round."""

    model_id: int
    round: int
    device: ChecksumAddress
    cid: str
    content_hash: bytes
    sample_count: int
    tx_hash: str
    relayed: bool


class DeviceRuntime:
    """One device: its key, its data and how it submits."""

    def __init__(
        self,
        system: System,
        store: Store,
        key: LocalAccount,
        data: torch.Tensor,
        labels: torch.Tensor,
        *,
        device: str | None = None,
        relayer: LocalAccount | None = None,
        training: TrainingSettings | None = None,
        seed: int = 0,
    ) -> None:
        self.system = system
        self.store = store
        self.key = key
        self.device = Web3.to_checksum_address(device or key.address)
        self.data = data
        self.labels = labels
        self.relayer = relayer
        self.training = training or TrainingSettings()
        self.seed = seed
        self._schemas: dict[int, ModelSchema] = {}

    def run_round(
        self,
        model_id: int,
        round: int | None = None,
        *,
        transform: DeltaTransform | None = None,
        claimed_sample_count: int | None = None,
    ) -> SubmittedUpdate:
        """Train on the round's global model and commit the update; return what was sent."""
        round = self._open_round(model_id, round)
        base = self._fetch_base(model_id, round)
        delta = self._train(base, round)
        if transform is not None:
            delta = transform(delta)
        sample_count = claimed_sample_count or len(self.labels)
        payload = self._encode(model_id, round, base, delta, sample_count)
        cid = self._store(payload)
        commitment = Commitment(
            model_id=model_id,
            round=round,
            device=self.device,
            content_hash=hashlib.sha256(payload).digest(),
            cid=cid,
            sample_count=sample_count,
            base_model_hash=base.sha256,
        )
        tx_hash = self._submit(commitment)
        log.info(
            "device.update_submitted device=%s model=%s round=%s cid=%s tx=%s relayed=%s",
            self.device,
            model_id,
            round,
            cid,
            tx_hash,
            self.relayer is not None,
        )
        return SubmittedUpdate(
            model_id=model_id,
            round=round,
            device=self.device,
            cid=cid,
            content_hash=commitment.content_hash,
            sample_count=sample_count,
            tx_hash=tx_hash,
            relayed=self.relayer is not None,
        )

    def _open_round(self, model_id: int, round: int | None) -> int:
        try:
            current = model_info(self.system, model_id).current_round
            round = current if round is None else round
            state = round_info(self.system, model_id, round).state
        except ZtfmError as exc:
            raise DeviceStepError("read round", str(exc)) from exc
        if round != current or state is not RoundState.OPEN:
            raise DeviceStepError(
                "read round",
                f"round {round} of model {model_id} is {state.name.lower()} "
                f"(current round {current}); wait for the next open round",
            )
        return round

    def _fetch_base(self, model_id: int, round: int) -> GlobalModel:
        try:
            schema = self._schemas.get(model_id)
            if schema is None:
                schema = fetch_base_model(self.system, self.store, model_id).schema
                self._schemas[model_id] = schema
            return fetch_round_base(self.system, self.store, model_id, round, schema)
        except ZtfmError as exc:
            raise DeviceStepError("fetch global model", str(exc)) from exc

    def _train(self, base: GlobalModel, round: int) -> dict[str, torch.Tensor]:
        try:
            _, delta = train_local(
                base.tensors,
                self.data,
                self.labels,
                epochs=self.training.epochs,
                batch_size=self.training.batch_size,
                lr=self.training.lr,
                seed=self.seed * 100_003 + round,
            )
        except ZtfmError as exc:
            raise DeviceStepError("train", str(exc)) from exc
        return delta

    def _encode(
        self,
        model_id: int,
        round: int,
        base: GlobalModel,
        delta: dict[str, torch.Tensor],
        sample_count: int,
    ) -> bytes:
        try:
            meta = UpdateMeta(
                model_id=model_id,
                round=round,
                base_model_hash="0x" + base.sha256.hex(),
                sample_count=sample_count,
                kind="delta",
            )
            return encode_update(delta, meta)
        except ZtfmError as exc:
            raise DeviceStepError("encode update", str(exc)) from exc

    def _store(self, payload: bytes) -> str:
        try:
            return self.store.put(payload)
        except ZtfmError as exc:
            raise DeviceStepError("store update", str(exc)) from exc

    def _submit(self, commitment: Commitment) -> str:
        try:
            if self.relayer is None:
                receipt = submit(self.system, self.key, commitment)
            else:
                signature = sign_commitment(self.system, self.key, commitment)
                receipt = submit(self.system, self.relayer, commitment, signature)
        except ZtfmError as exc:
            raise DeviceStepError("submit commitment", str(exc)) from exc
        return "0x" + bytes(receipt["transactionHash"]).hex()
