"""Re-verify a finished round from chain data and the content store alone.

An auditor needs no access to the aggregator's journal. :func:`audit_round` reads the
round's finalization event and every commitment event, fetches the report, each update
and the published reference update, repeats every check, re-aggregates, and lists
each place where its result differs from what the aggregator finalized on chain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ztfm_chain.aggregator.journal import CommitmentRow
from ztfm_chain.aggregator.reasons import Reason
from ztfm_chain.aggregator.rounds import (
    AnomalySettings,
    RootData,
    UpdateStack,
    accepted_digest,
    compute_outcome,
)
from ztfm_chain.aggregator.verify import (
    Verdict,
    check_content,
    check_current_status_many,
    check_provenance_many,
)
from ztfm_chain.chain.deploy import System
from ztfm_chain.chain.events import iter_events
from ztfm_chain.chain.models import RoundState, model_info, round_info
from ztfm_chain.exceptions import StorageError, UsageError, ZtfmError
from ztfm_chain.globalmodel import fetch_base_model, fetch_model_bytes, schema_of
from ztfm_chain.storage.base import Store
from ztfm_chain.updates import decode_model


@dataclass
class AuditResult:
    """Findings of an audit: each commitment's reason and every disagreement."""

    model_id: int
    round: int
    state: str
    reasons: dict[str, str] = field(default_factory=dict)
    disagreements: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the auditor agrees with everything the aggregator finalized."""
        return not self.disagreements


def audit_round(
    system: System,
    store: Store,
    model_id: int,
    round: int,
    *,
    anomaly: AnomalySettings | None = None,
    root: RootData | None = None,
) -> AuditResult:
    """Re-verify round ``round`` of model ``model_id``; see the module docstring.

    ``root`` must be the aggregator's root set when the aggregator ran the root-set
    loss check. Without it the check is skipped, so the updates it flagged show up
    as disagreements.
    Unless ``anomaly`` is given, the check runs when the report records that the
    aggregator ran it.
    """
    info = round_info(system, model_id, round)
    if info.state not in (RoundState.FINALIZED, RoundState.FAILED):
        raise UsageError(
            f"round {round} of model {model_id} is "
            f"{'never opened' if info.state is RoundState.NONE else info.state.name.lower()}"
            "; only a "
            "finalized or failed round can be audited"
        )
    result = AuditResult(model_id, round, info.state.name.lower())
    final = _finalization_event(system, model_id, round)
    final_block = int(final["blockNumber"])
    args = final["args"]
    report = _fetch_report(store, args, result)
    ran_root_loss = bool(report.get("root_loss_check", False))
    model = model_info(system, model_id, final_block - 1)
    base_model = fetch_base_model(system, store, model_id)
    schema = base_model.schema
    # The round's base is the model's global model when the round opened: the
    # report names its CID, and the bytes must match the hash the chain recorded.
    try:
        base_bytes = fetch_model_bytes(
            store,
            report.get("base_model_cid", model.base_model_cid),
            info.base_model_hash,
            what=f"base model of round {round}",
        )
    except ZtfmError as exc:
        result.disagreements.append(f"base model named by the report: {exc}")
        raise UsageError(
            f"cannot audit round {round}: its base model is not available ({exc})"
        ) from None
    base = decode_model(base_bytes, schema, max_size=len(base_bytes))
    rows = [
        CommitmentRow.from_event(e)
        for e in iter_events(
            system.client,
            system.models.events.UpdateCommitted,
            system.deployment.deployed_at_block,
            final_block,
            argument_filters={"modelId": model_id, "round": round},
        )
    ]
    verdicts: dict[str, Verdict] = {}
    verified = UpdateStack(schema, len(rows))
    seen: set[str] = set()
    duplicates = []
    for row in rows:
        duplicates.append(row.device in seen)
        seen.add(row.device)
    provenance_verdicts = check_provenance_many(system, rows, duplicates)
    passed = [row for row, v in zip(rows, provenance_verdicts, strict=True) if v.ok]
    standing_verdicts = dict(
        zip(
            (id(row) for row in passed),
            check_current_status_many(system, model, passed, final_block - 1),
            strict=True,
        )
    )
    for row, provenance in zip(rows, provenance_verdicts, strict=True):
        if not provenance.ok:
            verdicts[row.device] = provenance
            continue
        standing = standing_verdicts[id(row)]
        if not standing.ok:
            verdicts[row.device] = standing
            continue
        try:
            content = check_content(store, model, schema, row)
        except StorageError as exc:
            content = None
            result.disagreements.append(f"{row.device}: content not checked: {exc}")
        if content is None:
            verdicts[row.device] = Verdict(Reason.CONTENT_UNAVAILABLE)
        elif isinstance(content, Verdict):
            verdicts[row.device] = content
        else:
            verified.add(content)
    reference = None
    if report.get("reference_cid"):
        try:
            reference_bytes = store.get(report["reference_cid"])
            reference = decode_model(
                reference_bytes,
                schema_of(reference_bytes),
                max_size=len(reference_bytes),
            )
        except ZtfmError as exc:
            result.disagreements.append(f"reference update not usable: {exc}")
    outcome = compute_outcome(
        schema=schema,
        base=base,
        updates=verified,
        rejected={d: (v.reason, v.detail) for d, v in verdicts.items()},
        rule_id=model.aggregation_rule,
        quorum=model.quorum,
        reference_tensors=reference,
        anomaly=anomaly or AnomalySettings(root_loss=ran_root_loss),
        root=root,
    )
    result.reasons = {d: r.name for d, (r, _) in sorted(outcome.verdicts.items())}
    _compare(result, report, rows, outcome, args, info.state)
    if ran_root_loss and root is None and result.disagreements:
        result.disagreements.append(
            "the report says the aggregator ran the root-set loss check, which "
            "this audit skipped for lack of a root set, so its verdicts can differ: "
            "repeat the audit with the aggregator's root set "
            "(`ztfm audit round --root-digits`)"
        )
    return result


def _finalization_event(system: System, model_id: int, round: int) -> Any:
    for event in (
        system.models.events.RoundFinalized,
        system.models.events.RoundFailed,
    ):
        found = list(
            iter_events(
                system.client,
                event,
                system.deployment.deployed_at_block,
                system.client.w3.eth.block_number,
                argument_filters={"modelId": model_id, "round": round},
            )
        )
        if found:
            return found[-1]
    raise UsageError(f"no finalization event for round {round} of model {model_id}")


def _fetch_report(store: Store, args: Any, result: AuditResult) -> dict[str, Any]:
    data = store.get(args["reportCid"])
    actual = hashlib.sha256(data).digest()
    if actual != bytes(args["reportHash"]):
        result.disagreements.append(
            f"report {args['reportCid']} hashes to 0x{actual.hex()}, the chain "
            f"records 0x{bytes(args['reportHash']).hex()}"
        )
    try:
        report = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        result.disagreements.append(f"report is not valid JSON: {exc!r}")
        return {}
    if not isinstance(report, dict):
        result.disagreements.append("report is not a JSON object")
        return {}
    return _sanitized(report, result)


def _sanitized(report: dict[str, Any], result: AuditResult) -> dict[str, Any]:
    """Keep the report fields the audit reads only when they have the right types."""
    clean: dict[str, Any] = {}
    for key in ("reference_cid", "base_model_cid"):
        value = report.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            clean[key] = value
        else:
            result.disagreements.append(
                f"report field {key} is not a string: {value!r}"
            )
    root_loss_check = report.get("root_loss_check", False)
    if isinstance(root_loss_check, bool):
        clean["root_loss_check"] = root_loss_check
    else:
        result.disagreements.append(
            f"report field root_loss_check is not a boolean: {root_loss_check!r:.200}"
        )
    commitments = report.get("commitments", [])
    if not isinstance(commitments, list):
        result.disagreements.append("report field commitments is not a list")
        commitments = []
    rows = []
    for entry in commitments:
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("device"), str)
            and isinstance(entry.get("reason"), str)
        ):
            rows.append({"device": entry["device"], "reason": entry["reason"]})
        else:
            result.disagreements.append(
                f"report has an invalid commitment entry: {entry!r:.200}"
            )
    clean["commitments"] = rows
    return clean


def _compare(
    result: AuditResult,
    report: dict[str, Any],
    rows: list[Any],
    outcome: Any,
    args: Any,
    state: RoundState,
) -> None:
    reported = {row["device"]: row["reason"] for row in report.get("commitments", [])}
    for device, reason in result.reasons.items():
        if reported.get(device) != reason:
            result.disagreements.append(
                f"{device}: auditor finds {reason}, report says {reported.get(device)}"
            )
    for device in set(reported) - set(result.reasons):
        result.disagreements.append(f"{device}: in the report but has no commitment")
    content = {row.device: row.content_hash for row in rows}
    digest = accepted_digest([(d, content[d]) for d in outcome.accepted])
    if state is RoundState.FAILED:
        # RoundFailed records no digest; the check is that quorum was missed.
        if outcome.new_model is not None:
            result.disagreements.append(
                "the auditor reaches quorum, but the round was recorded as failed"
            )
        return
    if digest != bytes(args["acceptedDigest"]):
        result.disagreements.append(
            f"accepted digest 0x{digest.hex()} differs from the chain's "
            f"0x{bytes(args['acceptedDigest']).hex()}"
        )
    if state is RoundState.FINALIZED:
        if outcome.new_model is None:
            result.disagreements.append(
                "the auditor finds the round below quorum, but it was finalized"
            )
        elif hashlib.sha256(outcome.new_model).digest() != bytes(args["newModelHash"]):
            result.disagreements.append(
                f"re-aggregated model hashes to "
                f"0x{hashlib.sha256(outcome.new_model).hexdigest()}, the chain "
                f"records 0x{bytes(args['newModelHash']).hex()}"
            )
