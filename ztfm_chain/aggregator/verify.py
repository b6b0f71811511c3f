"""Provenance and content checks of one update commitment.

:func:`check_provenance` runs the chain checks in a fixed order and returns the first
failure; :func:`check_content` fetches the update and checks its bytes. Neither trusts
the contract's own checks: each one is repeated from chain state read at the block
before the commitment's block, and device status is checked again at aggregation.

NOTE: state is read at ``block - 1``, so a status change earlier in the same block as
the commitment is seen only by the check at aggregation time. Reading past state needs
an archive node on a long-lived chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from web3 import Web3

from ztfm_chain.aggregator.journal import CommitmentRow
from ztfm_chain.aggregator.reasons import Reason
from ztfm_chain.chain.batch import Pending, ReadBatch
from ztfm_chain.chain.deploy import System
from ztfm_chain.chain.models import ModelInfo, RoundInfo, RoundState
from ztfm_chain.exceptions import (
    ContentMismatch,
    ContentUnavailable,
    ObjectTooLarge,
    SignatureError,
    UpdateError,
    UsageError,
)
from ztfm_chain.identity import eip712
from ztfm_chain.identity.registrar import DeviceRecord, DeviceStatus
from ztfm_chain.storage.base import Store
from ztfm_chain.updates import ModelSchema, decode_update


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check: ``reason`` is ACCEPTED when it passed."""

    reason: Reason
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the check passed."""
        return self.reason is Reason.ACCEPTED


PASSED = Verdict(Reason.ACCEPTED)


@dataclass(frozen=True)
class VerifiedUpdate:
    """An update whose provenance and content passed every check."""

    row: CommitmentRow
    tensors: dict[str, torch.Tensor]
    sample_count: int


def check_provenance(
    system: System, model: ModelInfo, row: CommitmentRow, *, duplicate: bool
) -> Verdict:
    """Check one commitment against chain state at the block before its own.

    ``model`` is the model's record at that block. See :func:`check_provenance_many`.
    """
    return check_provenance_many(system, [row], [duplicate], [model])[0]


def check_provenance_many(
    system: System,
    rows: Sequence[CommitmentRow],
    duplicates: Sequence[bool],
    models: Sequence[ModelInfo] | None = None,
) -> list[Verdict]:
    """Check commitments against chain state at the block before each one's own.

    Order per commitment: model and round, signature, device enrolled and Active,
    credential, role and segment, trust, base model hash, duplicate. The state is
    read in two JSON-RPC batches for all rows together, never one request per read.
    ``models`` gives each row's model record at ``block - 1``; when it is None, the
    records are read in the same batch.
    """
    if len(duplicates) != len(rows) or (
        models is not None and len(models) != len(rows)
    ):
        raise UsageError(
            f"got {len(rows)} rows, {len(duplicates)} duplicate flags and "
            f"{'no' if models is None else len(models)} models; expected one each"
        )
    if not rows:
        return []
    batch = ReadBatch(system.client)
    reads = [
        _ProvenanceReads(
            model=None
            if models is not None
            else batch.call(
                system.models, "modelOf", [row.model_id], block=row.block - 1
            ),
            round=batch.call(
                system.models, "roundOf", [row.model_id, row.round], block=row.block - 1
            ),
            device=_queue_device(
                batch, system, Web3.to_checksum_address(row.device), row.block - 1
            ),
            header=batch.block(row.block),
        )
        for row in rows
    ]
    batch.execute()
    # The segment to check is in the device record, so it takes a second batch.
    segments = ReadBatch(system.client)
    records = [read.device.record() for read in reads]
    segment_reads = [
        _queue_segment(segments, system, row.model_id, record, row.block - 1)
        for row, record in zip(rows, records, strict=True)
    ]
    segments.execute()
    verdicts = []
    for index, row in enumerate(rows):
        read = reads[index]
        if models is not None:
            model = models[index]
        else:
            assert read.model is not None
            model = ModelInfo.from_struct(row.model_id, read.model.value)
        standing = _standing_verdict(
            model,
            Web3.to_checksum_address(row.device),
            records[index],
            block=row.block - 1,
            timestamp=int(read.header.value["timestamp"], 16),
            segment_allowed=bool(segment_reads[index].value),
            score=read.device.score(),
        )
        verdicts.append(
            _provenance_verdict(
                system,
                row,
                RoundInfo.from_struct(read.round.value),
                records[index],
                standing,
                duplicate=duplicates[index],
            )
        )
    return verdicts


def check_current_status(
    system: System, model: ModelInfo, row: CommitmentRow, block: int | None = None
) -> Verdict:
    """Check one device's standing again at aggregation time.

    See :func:`check_current_status_many`.
    """
    return check_current_status_many(system, model, [row], block)[0]


def check_current_status_many(
    system: System,
    model: ModelInfo,
    rows: Sequence[CommitmentRow],
    block: int | None = None,
) -> list[Verdict]:
    """Check the devices' standing again at ``block`` (default: the latest block).

    A device revoked, suspended, moved to another segment, stripped of a role, whose
    credential expired or whose trust fell below the minimum after it committed is
    rejected too: verification is continuous, not a one-off at enrolment. The state
    of every row is read in two JSON-RPC batches.
    """
    if not rows:
        return []
    client = system.client
    header = client.read(
        lambda: client.w3.eth.get_block("latest" if block is None else block)
    )
    number, timestamp = int(header["number"]), int(header["timestamp"])
    batch = ReadBatch(client)
    devices = [Web3.to_checksum_address(row.device) for row in rows]
    reads = [_queue_device(batch, system, device, number) for device in devices]
    batch.execute()
    segments = ReadBatch(client)
    records = [read.record() for read in reads]
    segment_reads = [
        _queue_segment(segments, system, model.model_id, record, number)
        for record in records
    ]
    segments.execute()
    return [
        _standing_verdict(
            model,
            device,
            record,
            block=number,
            timestamp=timestamp,
            segment_allowed=bool(segment_read.value),
            score=read.score(),
        )
        for device, record, read, segment_read in zip(
            devices, records, reads, segment_reads, strict=True
        )
    ]


def check_content(
    store: Store,
    model: ModelInfo,
    schema: ModelSchema,
    row: CommitmentRow,
) -> Verdict | VerifiedUpdate | None:
    """Fetch and check the update; None means the store did not serve it yet."""
    try:
        data = store.get(row.cid)
    except UsageError as exc:
        # The contract stores any string as the CID; one that is not a CID of
        # content this store can verify is a malformed commitment.
        return Verdict(Reason.MALFORMED, f"commitment CID is not usable: {exc}")
    except ContentMismatch as exc:
        return Verdict(Reason.CID_MISMATCH, str(exc))
    except ObjectTooLarge as exc:
        return Verdict(Reason.TOO_LARGE, str(exc))
    except ContentUnavailable:
        return None
    actual = "0x" + hashlib.sha256(data).hexdigest()
    if actual != row.content_hash.lower():
        return Verdict(
            Reason.HASH_MISMATCH,
            f"bytes at {row.cid} hash to {actual}, commitment says {row.content_hash}",
        )
    try:
        decoded = decode_update(
            data,
            schema,
            max_size=model.max_update_bytes,
            max_sample_count=model.max_sample_count,
        )
    except UpdateError as exc:
        return Verdict(Reason[exc.reason], str(exc))
    meta = decoded.meta
    if meta.model_id != row.model_id or meta.round != row.round:
        return Verdict(
            Reason.WRONG_ROUND,
            f"update metadata names model {meta.model_id} round {meta.round}, "
            f"commitment model {row.model_id} round {row.round}",
        )
    if meta.base_model_hash != row.base_model_hash.lower():
        return Verdict(
            Reason.STALE_BASE_MODEL,
            f"update metadata base {meta.base_model_hash}, commitment base "
            f"{row.base_model_hash}",
        )
    if meta.sample_count != row.sample_count:
        return Verdict(
            Reason.BAD_SAMPLE_COUNT,
            f"update metadata claims {meta.sample_count} samples, commitment "
            f"{row.sample_count}",
        )
    if meta.kind != "delta":
        return Verdict(Reason.MALFORMED, f"update kind is {meta.kind!r}, not 'delta'")
    return VerifiedUpdate(row, decoded.tensors, meta.sample_count)


def _check_signature(system: System, row: CommitmentRow, key: str) -> Verdict:
    if row.signature in ("", "0x"):
        # A direct commitment: the transaction sender, which the event records as
        # the signer, must be the device's key.
        if row.signer.lower() != key.lower():
            return Verdict(
                Reason.BAD_SIGNATURE,
                f"sent by {row.signer}, but the device's key was {key}",
            )
        return PASSED
    # The fast path of eip712: the digest is packed by hand and the recovered
    # address is compared as bytes, without EIP-55 checksum formatting.
    try:
        digest = eip712.commitment_digest(
            chain_id=system.client.chain_id,
            model_registry=system.deployment.model_registry,
            model_id=row.model_id,
            round=row.round,
            device=row.device,
            content_hash=bytes.fromhex(row.content_hash[2:]),
            cid=row.cid,
            sample_count=row.sample_count,
            base_model_hash=bytes.fromhex(row.base_model_hash[2:]),
            nonce=row.nonce,
        )
    except (UsageError, ValueError) as exc:
        # Event fields are ABI-decoded, so this needs a node that serves invalid logs.
        return Verdict(Reason.MALFORMED, f"commitment fields are not signable: {exc}")
    try:
        signer = eip712.recover_address(digest, bytes.fromhex(row.signature[2:]))
    except SignatureError as exc:
        return Verdict(Reason.BAD_SIGNATURE, str(exc))
    if signer != bytes.fromhex(key[2:]):
        return Verdict(
            Reason.BAD_SIGNATURE,
            f"signed by {Web3.to_checksum_address(signer)}, but the device's key "
            f"was {key}",
        )
    return PASSED


@dataclass(frozen=True)
class _ProvenanceReads:
    """The queued reads of one commitment's chain state at ``block - 1``."""

    model: Pending | None
    round: Pending
    device: _DeviceRead
    header: Pending


@dataclass(frozen=True)
class _DeviceRead:
    """The queued reads of one device's record, key and trust score."""

    record_read: Pending
    score_read: Pending

    def record(self) -> DeviceRecord:
        raw, key = self.record_read.value
        return DeviceRecord.from_struct(raw, key)

    def score(self) -> int:
        return int(self.score_read.value)


def _queue_device(
    batch: ReadBatch, system: System, device: str, block: int
) -> _DeviceRead:
    return _DeviceRead(
        batch.call(system.devices, "deviceWithKey", [device], block=block),
        batch.call(system.trust, "scoreOf", [device], block=block),
    )


def _queue_segment(
    batch: ReadBatch, system: System, model_id: int, record: DeviceRecord, block: int
) -> Pending:
    return batch.call(
        system.models, "isSegmentAllowed", [model_id, record.segment], block=block
    )


def _provenance_verdict(
    system: System,
    row: CommitmentRow,
    round_: RoundInfo,
    record: DeviceRecord,
    standing: Verdict,
    *,
    duplicate: bool,
) -> Verdict:
    before = row.block - 1
    if round_.state is not RoundState.OPEN:
        return Verdict(
            Reason.WRONG_ROUND,
            f"round {row.round} was {round_.state.name.lower()} at block {before}",
        )
    signature_verdict = _check_signature(system, row, record.key)
    if not signature_verdict.ok:
        return signature_verdict
    if not standing.ok:
        return standing
    if row.base_model_hash.lower() != "0x" + round_.base_model_hash.hex():
        return Verdict(
            Reason.STALE_BASE_MODEL,
            f"update trained from {row.base_model_hash}, round base is "
            f"0x{round_.base_model_hash.hex()}",
        )
    if duplicate:
        return Verdict(
            Reason.DUPLICATE,
            f"{Web3.to_checksum_address(row.device)} already committed in round "
            f"{row.round}",
        )
    return PASSED


def _standing_verdict(
    model: ModelInfo,
    device: str,
    record: DeviceRecord,
    *,
    block: int,
    timestamp: int,
    segment_allowed: bool,
    score: int,
) -> Verdict:
    """Check status, credential, role, segment and trust, in that order."""
    status = _check_status(record.status, device, block)
    if not status.ok:
        return status
    if record.credential_expires_at <= timestamp:
        return Verdict(
            Reason.CREDENTIAL_EXPIRED,
            f"credential of {device} expires at {record.credential_expires_at}, "
            f"checked at {timestamp}",
        )
    if record.roles & model.required_roles != model.required_roles:
        return Verdict(
            Reason.ROLE_MISSING,
            f"device roles {record.roles:#x}, model requires {model.required_roles:#x}",
        )
    if not segment_allowed:
        return Verdict(
            Reason.SEGMENT_NOT_ALLOWED,
            f"segment {record.segment} does not take part in model {model.model_id}",
        )
    if score < model.min_trust:
        return Verdict(
            Reason.TRUST_TOO_LOW, f"trust {score} below the minimum {model.min_trust}"
        )
    return PASSED


def _check_status(status: DeviceStatus, device: str, block: object) -> Verdict:
    reasons = {
        DeviceStatus.NONE: Reason.UNREGISTERED_DEVICE,
        DeviceStatus.SUSPENDED: Reason.DEVICE_SUSPENDED,
        DeviceStatus.REVOKED: Reason.DEVICE_REVOKED,
    }
    if status in reasons:
        return Verdict(
            reasons[status], f"{device} was {status.name.lower()} at block {block}"
        )
    return PASSED
