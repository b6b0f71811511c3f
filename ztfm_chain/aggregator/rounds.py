"""One round's outcome: scores, robust aggregate, new global model, trust, report.

Everything here is a pure function of the verified updates, the base model, the
current trust scores and the settings, so an auditor with the same inputs computes
the same new model hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ztfm_chain.aggregator.reasons import Reason
from ztfm_chain.aggregator.verify import VerifiedUpdate
from ztfm_chain.chain.models import AggregationRule as RuleId
from ztfm_chain.exceptions import UsageError
from ztfm_chain.fl.aggregation import (
    AggregationRule,
    column_blocks,
    make_rule,
    row_norms_and_dots,
)
from ztfm_chain.fl.anomaly import (
    DEFAULT_MAX_NORM_RATIO,
    DEFAULT_MIN_COSINE,
    flag_anomalies,
    score_updates,
)
from ztfm_chain.fl.training import train_local
from ztfm_chain.fl.trust import (
    TrustPolicy,
    apply_penalty,
    behaviour_bps,
    update_trust,
)
from ztfm_chain.fl.validation import (
    DEFAULT_ROOT_LOSS_MARGIN,
    DEFAULT_ROOT_LOSS_MAX_COSINE,
    DEFAULT_ROOT_LOSS_MIN_BASE_LOSS,
    DEFAULT_ROOT_LOSS_REFERENCE_SHARE,
    DEFAULT_ROOT_LOSS_STEP,
    flag_root_loss,
    merge_flags,
    root_loss_changes,
)
from ztfm_chain.updates import ModelSchema, encode_model

#: The rule name in ztfm_chain.fl for each rule id a model stores on chain.
RULE_NAMES = {
    RuleId.FEDAVG: "fedavg",
    RuleId.TRIMMED_MEAN: "trimmed-mean",
    RuleId.MEDIAN: "median",
    RuleId.MULTI_KRUM: "multi-krum",
    RuleId.FLTRUST: "fltrust",
}
# Rule exclusions that mean the update points away from the reference or the crowd.
_ANOMALOUS_EXCLUSIONS = {"NON_POSITIVE_COSINE", "KRUM_SCORE", "ZERO_NORM"}


@dataclass(frozen=True)
class RootData:
    """The aggregator's own clean data set, for an FLTrust reference update."""

    data: torch.Tensor
    labels: torch.Tensor
    epochs: int = 2
    batch_size: int = 16
    lr: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class AnomalySettings:
    """Thresholds of the behavioural checks against the reference update.

    The ``root_loss_*`` fields set the root-set loss check of
    :func:`ztfm_chain.fl.validation.flag_root_loss`, which runs only when the
    aggregator has a root set and ``root_loss`` is true. It is off by default
    because its thresholds are calibrated on the digits demo only.
    """

    min_cosine: float = DEFAULT_MIN_COSINE
    max_norm_ratio: float = DEFAULT_MAX_NORM_RATIO
    root_loss: bool = False
    root_loss_step: float = DEFAULT_ROOT_LOSS_STEP
    root_loss_margin: float = DEFAULT_ROOT_LOSS_MARGIN
    root_loss_reference_share: float = DEFAULT_ROOT_LOSS_REFERENCE_SHARE
    root_loss_max_cosine: float = DEFAULT_ROOT_LOSS_MAX_COSINE
    root_loss_min_base_loss: float = DEFAULT_ROOT_LOSS_MIN_BASE_LOSS


@dataclass
class RoundOutcome:
    """Outcome of one round: what the aggregator publishes and writes."""

    accepted: list[str]
    verdicts: dict[str, tuple[Reason, str]]
    scores: dict[str, dict[str, float]]
    weights: dict[str, float]
    new_model: bytes | None
    reference: bytes | None
    trust: dict[str, tuple[int, int, Reason]] = field(default_factory=dict)


class UpdateStack:
    """Verified updates of one round, flattened into the rows of one float32 matrix.

    The matrix is allocated once for ``capacity`` updates, and :meth:`add` copies
    each update into its row, so the caller can drop the decoded tensors at once.
    Memory stays at one float32 copy of the round's updates; the rules then read it
    one block of columns at a time.
    """

    def __init__(self, schema: ModelSchema, capacity: int) -> None:
        if capacity < 0:
            raise UsageError(f"capacity must be >= 0, got {capacity}")
        self.schema = schema
        self._matrix = torch.empty(capacity, schema.numel, dtype=torch.float32)
        self.devices: list[str] = []
        self.sample_counts: list[int] = []

    @classmethod
    def of(cls, schema: ModelSchema, updates: Sequence[VerifiedUpdate]) -> UpdateStack:
        """Stack a list of verified updates."""
        stack = cls(schema, len(updates))
        for update in updates:
            stack.add(update)
        return stack

    def __len__(self) -> int:
        return len(self.devices)

    @property
    def matrix(self) -> torch.Tensor:
        """The filled rows, one update per row in the order they were added."""
        return self._matrix[: len(self.devices)]

    def add(self, update: VerifiedUpdate) -> None:
        """Copy the update into the next free row."""
        row = len(self.devices)
        if row == self._matrix.shape[0]:
            raise UsageError(f"the stack is full: it was allocated for {row} updates")
        self.schema.flatten(update.tensors, out=self._matrix[row])
        self.devices.append(update.row.device)
        self.sample_counts.append(update.sample_count)

    def keep(self, indices: Sequence[int]) -> None:
        """Keep only the rows at ``indices`` (ascending), moving them to the front."""
        if list(indices) != sorted(set(indices)) or (
            indices and not 0 <= indices[0] <= indices[-1] < len(self)
        ):
            raise UsageError(
                f"indices must be ascending, unique and below {len(self)}, "
                f"got {list(indices)}"
            )
        # Rows only move towards the front, so no row is overwritten before it moves.
        for position, index in enumerate(indices):
            if position != index:
                self._matrix[position].copy_(self._matrix[index])
        self.devices = [self.devices[i] for i in indices]
        self.sample_counts = [self.sample_counts[i] for i in indices]


def compute_outcome(
    *,
    schema: ModelSchema,
    base: Mapping[str, torch.Tensor],
    updates: UpdateStack | Sequence[VerifiedUpdate],
    rejected: Mapping[str, tuple[Reason, str]],
    rule_id: int,
    quorum: int,
    reference_tensors: Mapping[str, torch.Tensor] | None,
    anomaly: AnomalySettings,
    root: RootData | None = None,
) -> RoundOutcome:
    """Score, filter and aggregate the verified updates of one round.

    ``rejected`` maps each device rejected by provenance or content checks to its
    reason. ``reference_tensors`` is the root-set update (see :func:`root_reference`);
    without one, the coordinate-wise median of the updates is the reference. With
    both ``root`` and ``reference_tensors``, the root-set loss check also runs on
    the base model and flags its updates as ANOMALOUS. Returns the new global model
    bytes, or None below ``quorum``. An :class:`UpdateStack` passed as ``updates``
    is consumed: its flagged rows are dropped in place.
    """
    verdicts: dict[str, tuple[Reason, str]] = dict(rejected)
    scores: dict[str, dict[str, float]] = {}
    weights: dict[str, float] = {}
    stack = (
        updates if isinstance(updates, UpdateStack) else UpdateStack.of(schema, updates)
    )
    if not len(stack):
        return RoundOutcome([], verdicts, scores, weights, None, None)
    devices = list(stack.devices)
    counts = torch.tensor(stack.sample_counts, dtype=torch.float64)
    reference_bytes = None
    if reference_tensors is not None:
        reference_bytes = encode_model(
            {k: v.to(torch.float32) for k, v in reference_tensors.items()}
        )
    # A zero update carries nothing to aggregate, and a majority of them would make
    # the coordinate-wise median reference zero, against which nothing can be scored.
    norms, _ = row_norms_and_dots(stack.matrix, None)
    nonzero = [i for i in range(len(devices)) if float(norms[i]) > 0]
    if len(nonzero) < len(devices):
        for index in range(len(devices)):
            if index not in nonzero:
                verdicts[devices[index]] = (
                    Reason.ANOMALOUS,
                    f"update {index} has norm 0, so it carries nothing to aggregate",
                )
        stack.keep(nonzero)
        devices = [devices[i] for i in nonzero]
        counts = counts[nonzero]
    if not devices:
        return RoundOutcome([], verdicts, scores, weights, None, reference_bytes)
    try:
        accepted, new_model = _score_and_aggregate(
            schema=schema,
            base=base,
            stack=stack,
            devices=devices,
            counts=counts,
            reference_tensors=reference_tensors,
            rule_id=rule_id,
            quorum=quorum,
            anomaly=anomaly,
            root=root,
            verdicts=verdicts,
            scores=scores,
            weights=weights,
        )
    except UsageError as exc:
        # The round fails rather than stop the daemon; devices that were not
        # flagged lose no trust, because the failure is not theirs.
        for device in devices:
            if verdicts.get(device, (Reason.ACCEPTED, ""))[0] is not Reason.ANOMALOUS:
                verdicts[device] = (
                    Reason.NOT_AGGREGATED,
                    f"the round could not be aggregated: {exc}",
                )
        accepted, new_model = [], None
    return RoundOutcome(accepted, verdicts, scores, weights, new_model, reference_bytes)


def _score_and_aggregate(
    *,
    schema: ModelSchema,
    base: Mapping[str, torch.Tensor],
    stack: UpdateStack,
    devices: list[str],
    counts: torch.Tensor,
    reference_tensors: Mapping[str, torch.Tensor] | None,
    rule_id: int,
    quorum: int,
    anomaly: AnomalySettings,
    root: RootData | None,
    verdicts: dict[str, tuple[Reason, str]],
    scores: dict[str, dict[str, float]],
    weights: dict[str, float],
) -> tuple[list[str], bytes | None]:
    """Score, filter and aggregate the stacked updates; fill the three mappings.

    Returns the accepted devices and the new model bytes (None below ``quorum``).
    Raises UsageError when the updates cannot be scored or aggregated.
    """
    if reference_tensors is not None:
        reference = schema.flatten(reference_tensors).to(torch.float64)
    else:
        reference = _lower_median(stack.matrix)
    anomaly_scores = score_updates(stack.matrix, reference)
    flags = flag_anomalies(
        anomaly_scores,
        min_cosine=anomaly.min_cosine,
        max_norm_ratio=anomaly.max_norm_ratio,
    )
    root_changes: torch.Tensor | None = None
    if root is not None and reference_tensors is not None and anomaly.root_loss:
        root_scores = root_loss_changes(
            schema,
            base,
            stack.matrix,
            root.data,
            root.labels,
            reference=reference,
            step=anomaly.root_loss_step,
        )
        root_changes = root_scores.changes
        root_flags = flag_root_loss(
            root_scores,
            anomaly_scores.cosine,
            margin=anomaly.root_loss_margin,
            reference_share=anomaly.root_loss_reference_share,
            max_cosine=anomaly.root_loss_max_cosine,
            min_base_loss=anomaly.root_loss_min_base_loss,
        )
        flagged = merge_flags(flags, root_flags)
    else:
        flagged = merge_flags(flags)
    for index, device in enumerate(devices):
        scores[device] = {
            "cosine": float(anomaly_scores.cosine[index]),
            "norm_ratio": float(anomaly_scores.norm_ratio[index]),
            "l2_distance": float(anomaly_scores.l2_distance[index]),
        }
        if root_changes is not None:
            scores[device]["root_loss_change"] = float(root_changes[index])
        if index in flagged:
            verdicts[device] = (Reason.ANOMALOUS, flagged[index].detail)
    kept = [i for i in range(len(devices)) if i not in flagged]
    accepted: list[str] = []
    new_model: bytes | None = None
    if kept:
        stack.keep(kept)
        rule = _make_rule(rule_id, len(kept))
        result = rule.aggregate(stack.matrix, counts[kept], reference)
        excluded = {e.index: e for e in result.excluded}
        for position, index in enumerate(kept):
            device = devices[index]
            weights[device] = float(result.weights[position])
            exclusion = excluded.get(position)
            if exclusion is not None and exclusion.reason in _ANOMALOUS_EXCLUSIONS:
                verdicts[device] = (Reason.ANOMALOUS, exclusion.detail)
            else:
                verdicts[device] = (Reason.ACCEPTED, "")
                accepted.append(device)
        if len(accepted) >= quorum:
            delta = schema.unflatten(result.vector.to(torch.float32))
            new_state = {name: base[name] + delta[name] for name in schema}
            new_model = encode_model(new_state)
    return accepted, new_model


def next_trust(
    outcome: RoundOutcome, current: Mapping[str, int], policy: TrustPolicy
) -> dict[str, tuple[int, int, Reason]]:
    """Return (old, new, reason) per device that had a verdict this round.

    NOTE: a device below its model's minimum trust cannot commit, so it gets no
    verdict and no new score. Only an operator lifts it back (``ztfm trust set``).
    """
    changes: dict[str, tuple[int, int, Reason]] = {}
    for device, (reason, _) in outcome.verdicts.items():
        old = current[device]
        if reason is Reason.ACCEPTED:
            cosine = outcome.scores.get(device, {}).get("cosine", 0.0)
            new = update_trust(old, behaviour_bps(cosine, anomalous=False), policy)
        elif reason is Reason.ANOMALOUS:
            new = update_trust(old, behaviour_bps(0.0, anomalous=True), policy)
        else:
            new = apply_penalty(old, reason.name, policy)
        changes[device] = (old, new, reason)
    return changes


def accepted_digest(accepted: list[tuple[str, str]]) -> bytes:
    """Digest of the accepted set: SHA-256 over sorted ``device || content hash``.

    Each entry is the device's 20 address bytes followed by the 32-byte content hash,
    sorted by device address.
    """
    payload = b"".join(
        bytes.fromhex(device[2:].lower()) + bytes.fromhex(content[2:])
        for device, content in sorted(accepted, key=lambda e: e[0].lower())
    )
    return hashlib.sha256(payload).digest()


def report_document(
    *,
    header: dict[str, Any],
    rows: list[dict[str, Any]],
    outcome: RoundOutcome,
) -> dict[str, Any]:
    """Assemble the JSON verification report of a round."""
    return {
        **header,
        "commitments": rows,
        "accepted": sorted(outcome.accepted),
        "trust": {
            device: {"old": old, "new": new, "reason": reason.name}
            for device, (old, new, reason) in sorted(outcome.trust.items())
        },
    }


def _lower_median(matrix: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise ``torch.median`` (the lower middle value), in float64."""
    vector = torch.empty(matrix.shape[1], dtype=torch.float64)
    for block in column_blocks(*matrix.shape):
        # The median selects a value, so the input dtype loses nothing, and rows of
        # the contiguous transpose are faster to select from than columns.
        columns = matrix[:, block].t().contiguous()
        vector[block] = torch.median(columns, dim=1).values
    return vector


def _make_rule(rule_id: int, n_updates: int) -> AggregationRule:
    name = RULE_NAMES.get(RuleId(rule_id), "fltrust")
    if name == "multi-krum":
        # Assume up to a third of the updates are Byzantine; Krum needs n > 2f + 2.
        n_byzantine = max(0, min((n_updates - 3) // 2, n_updates // 3))
        return make_rule(name, n_byzantine=n_byzantine)
    return make_rule(name)


def root_reference(
    base: Mapping[str, torch.Tensor], root: RootData | None
) -> dict[str, torch.Tensor] | None:
    """Train the base model on the aggregator's root set; return the delta."""
    if root is None:
        return None
    _, delta = train_local(
        base,
        root.data,
        root.labels,
        epochs=root.epochs,
        batch_size=root.batch_size,
        lr=root.lr,
        seed=root.seed,
    )
    return delta
