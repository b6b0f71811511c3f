"""Model and round operations on the ModelRegistry."""

from __future__ import annotations

from dataclasses import astuple, dataclass
from enum import IntEnum
from typing import Any

from eth_account.signers.local import LocalAccount
from web3.logs import DISCARD
from web3.types import BlockIdentifier, TxReceipt

from ztfm_chain.chain.deploy import System
from ztfm_chain.exceptions import UsageError


class RoundState(IntEnum):
    """Lifecycle of a round, as the ModelRegistry stores it."""

    NONE = 0
    OPEN = 1
    CLOSED = 2
    FINALIZED = 3
    FAILED = 4


class AggregationRule(IntEnum):
    """Aggregation rule ids stored with a model."""

    FEDAVG = 0
    TRIMMED_MEAN = 1
    MEDIAN = 2
    MULTI_KRUM = 3
    FLTRUST = 4


@dataclass(frozen=True)
class ModelParams:
    """Settings of a model; field order matches the contract's struct."""

    min_trust: int = 2_000
    required_roles: int = 1
    quorum: int = 1
    round_duration: int = 60
    max_update_bytes: int = 4 * 1024 * 1024
    max_sample_count: int = 10_000
    aggregation_rule: int = AggregationRule.FLTRUST

    def as_tuple(self) -> tuple[int, ...]:
        """Return the struct as the ABI encoder takes it."""
        return tuple(int(v) for v in astuple(self))

    @classmethod
    def from_tuple(cls, values: Any) -> ModelParams:
        """Build from the ABI-decoded struct."""
        return cls(*[int(v) for v in values])


@dataclass(frozen=True)
class ModelInfo:
    """A model's on-chain record."""

    model_id: int
    owner: str
    min_trust: int
    required_roles: int
    current_round: int
    max_update_bytes: int
    max_sample_count: int
    quorum: int
    round_duration: int
    aggregation_rule: int
    base_model_hash: bytes
    global_model_hash: bytes
    base_model_cid: str
    global_model_cid: str

    @classmethod
    def from_struct(cls, model_id: int, values: Any) -> ModelInfo:
        """Build from the ABI-decoded ``modelOf`` struct."""
        return cls(model_id, *values)


@dataclass(frozen=True)
class RoundInfo:
    """A round's on-chain record."""

    opened_at: int
    deadline: int
    state: RoundState
    accepted_count: int
    base_model_hash: bytes
    new_model_hash: bytes
    accepted_digest: bytes
    report_hash: bytes

    @classmethod
    def from_struct(cls, values: Any) -> RoundInfo:
        """Build from the ABI-decoded ``roundOf`` struct."""
        fields = list(values)
        fields[2] = RoundState(fields[2])
        return cls(*fields)


def create_model(
    system: System,
    manager: LocalAccount,
    *,
    base_model_hash: bytes,
    base_model_cid: str,
    params: ModelParams,
    segments: list[int],
    aggregators: list[str],
) -> int:
    """Create a model owned by ``manager`` and return its id."""
    if len(base_model_hash) != 32:
        raise UsageError(
            f"base_model_hash must be 32 bytes, got {len(base_model_hash)}"
        )
    receipt = system.client.transact(
        system.models.functions.createModel(
            base_model_hash, base_model_cid, params.as_tuple(), segments, aggregators
        ),
        manager,
    )
    (event,) = system.models.events.ModelCreated().process_receipt(
        receipt, errors=DISCARD
    )
    return int(event["args"]["modelId"])


def open_round(system: System, operator: LocalAccount, model_id: int) -> int:
    """Open the next round of a model and return its number."""
    receipt = system.client.transact(
        system.models.functions.openRound(model_id), operator
    )
    (event,) = system.models.events.RoundOpened().process_receipt(
        receipt, errors=DISCARD
    )
    return int(event["args"]["round"])


def close_round(
    system: System, aggregator: LocalAccount, model_id: int, round: int
) -> TxReceipt:
    """Stop a round from taking commitments before its deadline."""
    return system.client.transact(
        system.models.functions.closeRound(model_id, round), aggregator
    )


def finalize_round(
    system: System,
    aggregator: LocalAccount,
    model_id: int,
    round: int,
    *,
    new_model_hash: bytes,
    new_model_cid: str,
    accepted_digest: bytes,
    accepted_count: int,
    report_hash: bytes,
    report_cid: str,
) -> TxReceipt:
    """Finalize a round (or record it as failed below quorum)."""
    return system.client.transact(
        system.models.functions.finalizeRound(
            model_id,
            round,
            new_model_hash,
            new_model_cid,
            accepted_digest,
            accepted_count,
            report_hash,
            report_cid,
        ),
        aggregator,
    )


def model_info(
    system: System, model_id: int, block: BlockIdentifier = "latest"
) -> ModelInfo:
    """Read a model's record."""
    raw = system.client.call(system.models.functions.modelOf(model_id), block)
    return ModelInfo.from_struct(model_id, raw)


def round_info(
    system: System, model_id: int, round: int, block: BlockIdentifier = "latest"
) -> RoundInfo:
    """Read a round's record."""
    raw = system.client.call(system.models.functions.roundOf(model_id, round), block)
    return RoundInfo.from_struct(raw)
