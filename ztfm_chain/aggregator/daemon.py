"""The aggregator daemon: follow the chain, verify, aggregate, publish, finalize.

Each call to :meth:`Aggregator.step` does one pass:

1. read ``UpdateCommitted`` events up to ``head - confirmations`` (paginated, resuming
   from the journal's cursor) and record each commitment's provenance verdict;
2. for each aggregated model, close the open round early once it has
   ``close_after`` commitments, and aggregate a round once it is closed or past its
   deadline: fetch and check content, score, aggregate, publish the new global model
   and the verification report, and journal the result;
3. finalize aggregated rounds on chain, then write the trust scores;
4. open the next round when asked to.

Every step is journaled before the next starts, and each chain write first checks
whether an earlier run already made it, so a crash at any point can be resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from ztfm_chain.aggregator.journal import CommitmentRow, Journal
from ztfm_chain.aggregator.reasons import Reason
from ztfm_chain.aggregator.rounds import (
    RULE_NAMES,
    AnomalySettings,
    RootData,
    UpdateStack,
    accepted_digest,
    compute_outcome,
    next_trust,
    report_document,
    root_reference,
)
from ztfm_chain.aggregator.verify import (
    Verdict,
    check_content,
    check_current_status_many,
    check_provenance_many,
)
from ztfm_chain.chain.batch import ReadBatch
from ztfm_chain.chain.deploy import System
from ztfm_chain.chain.events import iter_events
from ztfm_chain.chain.models import (
    AggregationRule,
    ModelInfo,
    RoundState,
    close_round,
    finalize_round,
    model_info,
    open_round,
    round_info,
)
from ztfm_chain.exceptions import StorageError, ZtfmError
from ztfm_chain.fl.trust import DEFAULT_PENALTIES_BPS, TrustPolicy
from ztfm_chain.globalmodel import GlobalModel, fetch_base_model, fetch_round_base
from ztfm_chain.identity.registrar import DeviceStatus
from ztfm_chain.storage.base import Store

log = logging.getLogger(__name__)

#: Trust scores written per TrustRegistry transaction.
TRUST_BATCH = 100

#: Penalties of the default trust policy: the learning-side defaults plus the
#: standing checks. A revoked device drops to zero at once.
AGGREGATOR_PENALTIES_BPS = {
    **DEFAULT_PENALTIES_BPS,
    "DEVICE_REVOKED": 10_000,
    "DEVICE_SUSPENDED": 2_000,
    "CREDENTIAL_EXPIRED": 1_000,
    "ROLE_MISSING": 1_000,
}


def default_trust_policy() -> TrustPolicy:
    """Return the trust policy the daemon uses unless another one is given."""
    return TrustPolicy(penalties_bps=AGGREGATOR_PENALTIES_BPS)


@dataclass
class AggregatorSettings:
    """Settings of the daemon; every field has a working default for a local chain."""

    models: tuple[int, ...]
    confirmations: int = 0
    poll_interval: float = 1.0
    page_size: int = 2_000
    content_grace: float = 30.0
    close_after: int | None = None
    close_when_all_committed: bool = False
    open_rounds: bool = False
    max_rounds: int | None = None
    root: RootData | None = None
    anomaly: AnomalySettings = field(default_factory=AnomalySettings)
    trust_policy: TrustPolicy = field(default_factory=default_trust_policy)
    #: Fault injection for crash tests: stall forever right after this step
    #: (``events``, ``aggregated``, ``finalize-sent``, ``finalized``, ``trust-sent``)
    #: so that a test can kill -9 the process there. Set from
    #: ``ZTFM_AGGREGATOR_STALL_AFTER``; never set in production.
    stall_after: str | None = None


class Metrics:
    """Counters in the Prometheus text format, served on a loopback port."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, str]] = Counter()
        self.gauges: dict[str, float] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def inc(self, name: str, label: str = "", amount: int = 1) -> None:
        """Add to a counter, optionally labelled with a reason."""
        with self._lock:
            self.counters[(name, label)] += amount

    def set(self, name: str, value: float) -> None:
        """Set a gauge."""
        with self._lock:
            self.gauges[name] = value

    def render(self) -> str:
        """Return the metrics page."""
        lines = []
        with self._lock:
            for (name, label), value in sorted(self.counters.items()):
                labels = f'{{reason="{label}"}}' if label else ""
                lines.append(f"ztfm_{name}_total{labels} {value}")
            for name, gauge in sorted(self.gauges.items()):
                lines.append(f"ztfm_{name} {gauge}")
        return "\n".join(lines) + "\n"

    def serve(self, port: int) -> int:
        """Serve ``/metrics`` on 127.0.0.1:``port`` (0 picks a free port)."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                body = metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics.request " + format, *args)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


#: Devices per devicesOf and scoresOf call. A devicesOf call over 500 devices costs
#: about 4M gas, well below the 30M gas that Anvil allows an eth_call by default.
DEVICE_SLICE = 500


class Aggregator:
    """One aggregator account serving one or more models."""

    def __init__(
        self,
        system: System,
        store: Store,
        account: LocalAccount,
        journal: Journal,
        settings: AggregatorSettings,
        metrics: Metrics | None = None,
    ) -> None:
        self.system = system
        self.store = store
        self.account = account
        self.journal = journal
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._bases: dict[int, GlobalModel] = {}
        self._enrolled: list[str] = []
        self._enrolled_cursor = system.deployment.deployed_at_block - 1
        journal.bind(
            system.client.chain_id,
            system.deployment.genesis_hash,
            system.deployment.model_registry,
        )
        for model_id in settings.models:
            if not system.client.call(
                system.models.functions.isAggregator(model_id, account.address)
            ):
                raise ZtfmError(
                    f"{account.address} is not an aggregator of model {model_id}; "
                    "ask the model's owner to add it"
                )

    # --- the loop -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run passes until ``stop`` is set; errors of one pass are logged, not fatal."""
        log.info(
            "aggregator.started account=%s models=%s chain_id=%s",
            self.account.address,
            ",".join(map(str, self.settings.models)),
            self.system.client.chain_id,
        )
        failures = 0
        while not stop.is_set():
            try:
                self.step()
                failures = 0
            except Exception as exc:
                failures += 1
                # Log the first failures and then every tenth, and back off up to
                # 30 s, so that an outage neither floods the log nor the node.
                if failures <= 3 or failures % 10 == 0:
                    event = (
                        "aggregator.storage_unavailable"
                        if isinstance(exc, StorageError)
                        else "aggregator.step_failed"
                    )
                    log.warning(
                        "%s failures=%s error=%r",
                        event,
                        failures,
                        exc,
                        exc_info=not isinstance(exc, ZtfmError),
                    )
            delay = self.settings.poll_interval * 2 ** min(failures, 8)
            stop.wait(min(delay, max(self.settings.poll_interval, 30.0)))
        log.info("aggregator.stopped account=%s", self.account.address)

    def step(self) -> None:
        """Run one pass over the chain and every model's current round."""
        self.sync_events()
        for model_id in self.settings.models:
            self._advance_model(model_id)
        for model_id, round, phase in self.journal.rounds_in(
            ("aggregated", "finalized")
        ):
            if phase == "aggregated":
                self._finalize(model_id, round)
            self._write_trust(model_id, round)

    def finished(self) -> bool:
        """Tell whether every model reached ``max_rounds`` finished rounds."""
        if self.settings.max_rounds is None:
            return False
        return all(
            self.journal.phase(m, self.settings.max_rounds) == "done"
            for m in self.settings.models
        )

    # --- 1. follow the chain --------------------------------------------------------

    def sync_events(self) -> int:
        """Record the provenance verdict of every new commitment; return how many."""
        client = self.system.client
        head = client.read(lambda: client.w3.eth.block_number)
        confirmed = head - self.settings.confirmations
        start = self.journal.cursor(self.system.deployment.deployed_at_block - 1) + 1
        if start > confirmed:
            return 0
        event = self.system.models.events.UpdateCommitted
        rows: list[CommitmentRow] = []
        undecodable: dict[int, str] = {}
        for log_entry in iter_events(
            client,
            event,
            start,
            confirmed,
            page_size=self.settings.page_size,
            lenient=True,
        ):
            row = CommitmentRow.from_event(log_entry)
            if row.model_id in self.settings.models:
                # Set by iter_events for a log it could only decode leniently.
                problem = dict(log_entry).get("undecodable")
                if problem:
                    undecodable[len(rows)] = str(problem)
                rows.append(row)
        seen = 0
        with self.journal.transaction() as db:
            duplicates = []
            in_batch: set[tuple[int, int, str]] = set()
            for row in rows:
                key = (row.model_id, row.round, row.device)
                duplicates.append(
                    key in in_batch or self.journal.has_earlier_commitment(db, *key)
                )
                in_batch.add(key)
            verdicts = check_provenance_many(self.system, rows, duplicates)
            for index, problem in undecodable.items():
                verdicts[index] = Verdict(
                    Reason.MALFORMED, f"commitment event does not decode: {problem}"
                )
            for row, verdict in zip(rows, verdicts, strict=True):
                stored = CommitmentRow(
                    **{
                        **row.__dict__,
                        "status": "pending" if verdict.ok else "rejected",
                        "reason": None if verdict.ok else verdict.reason.name,
                        "detail": verdict.detail or None,
                    }
                )
                if self.journal.add_commitment(db, stored):
                    seen += 1
                    self._log_verdict(stored, verdict, stage="provenance")
            self.journal.set_cursor(db, confirmed)
        self.metrics.set("last_block", confirmed)
        if seen:
            self._stall("events")
        return seen

    # --- 2. rounds ------------------------------------------------------------------

    def _advance_model(self, model_id: int) -> None:
        model = model_info(self.system, model_id)
        round = model.current_round
        if round == 0:
            self._maybe_open(model_id, model)
            return
        info = round_info(self.system, model_id, round)
        phase = self.journal.phase(model_id, round)
        if phase is None:
            with self.journal.transaction() as db:
                self.journal.set_phase(db, model_id, round, "collecting")
            log.info(
                "round.opened model=%s round=%s deadline=%s base=0x%s",
                model_id,
                round,
                info.deadline,
                info.base_model_hash.hex(),
            )
            phase = "collecting"
        if phase == "collecting":
            commitments = self.journal.commitments(model_id, round)
            if info.state is RoundState.OPEN and self._ready_to_close(
                model, commitments
            ):
                close_round(self.system, self.account, model_id, round)
                log.info(
                    "round.closed model=%s round=%s commitments=%s",
                    model_id,
                    round,
                    len(commitments),
                )
                info = round_info(self.system, model_id, round)
            if info.state is RoundState.CLOSED or self._past(info.deadline):
                # Make sure every commitment up to now is journaled first.
                self.sync_events()
                try:
                    self._aggregate(model, round, info.deadline)
                except StorageError as exc:
                    # Nothing was decided: the round is aggregated once storage is back.
                    log.warning(
                        "round.storage_unavailable model=%s round=%s error=%s",
                        model_id,
                        round,
                        exc,
                    )
        elif phase == "done":
            self._maybe_open(model_id, model)

    def _ready_to_close(
        self, model: ModelInfo, commitments: list[CommitmentRow]
    ) -> bool:
        """Tell whether the open round can close before its deadline."""
        limit = self.settings.close_after
        if limit is not None and len(commitments) >= limit:
            return True
        if not self.settings.close_when_all_committed or not commitments:
            return False
        committed = {row.device.lower() for row in commitments}
        eligible = self._eligible_devices(model)
        return bool(eligible) and eligible <= committed

    def _eligible_devices(self, model: ModelInfo) -> set[str]:
        """Return the devices the contract would accept a commitment from now."""
        client = self.system.client
        head = client.read(lambda: client.w3.eth.block_number)
        start = self._enrolled_cursor + 1
        if start <= head:
            for entry in iter_events(
                client,
                self.system.devices.events.DeviceEnrolled,
                max(start, self.system.deployment.deployed_at_block),
                head,
                page_size=self.settings.page_size,
            ):
                self._enrolled.append(str(entry["args"]["device"]))
            self._enrolled_cursor = head
        if not self._enrolled:
            return set()
        latest = client.read(lambda: client.w3.eth.get_block("latest"))
        block = int(latest["number"])
        now = max(int(latest["timestamp"]), int(time.time()))
        # One devicesOf call over thousands of devices exceeds the node's gas cap
        # for eth_call, so the devices go in slices, all in one batch request.
        batch = ReadBatch(client)
        slices = [
            (
                batch.call(self.system.devices, "devicesOf", [part], block=block),
                batch.call(self.system.trust, "scoresOf", [part], block=block),
            )
            for part in (
                self._enrolled[start : start + DEVICE_SLICE]
                for start in range(0, len(self._enrolled), DEVICE_SLICE)
            )
        ]
        batch.execute()
        records = [r for devices, _ in slices for r in devices.value[0]]
        scores = [int(s) for _, part_scores in slices for s in part_scores.value]
        segments = ReadBatch(client)
        allowed = {
            segment: segments.call(
                self.system.models,
                "isSegmentAllowed",
                [model.model_id, segment],
                block=block,
            )
            for segment in {int(record[2]) for record in records}
        }
        segments.execute()
        eligible = set()
        for device, record, score in zip(self._enrolled, records, scores, strict=True):
            status, roles, segment, expires_at = (
                record[0],
                record[1],
                record[2],
                record[3],
            )
            if (
                status == DeviceStatus.ACTIVE
                and expires_at > now
                and roles & model.required_roles == model.required_roles
                and score >= model.min_trust
                and allowed[int(segment)].value
            ):
                eligible.add(device.lower())
        return eligible

    def _maybe_open(self, model_id: int, model: ModelInfo) -> None:
        if not self.settings.open_rounds:
            return
        limit = self.settings.max_rounds
        if limit is not None and model.current_round >= limit:
            return
        if model.current_round:
            state = round_info(self.system, model_id, model.current_round).state
            if state not in (RoundState.FINALIZED, RoundState.FAILED):
                return
        round = open_round(self.system, self.account, model_id)
        log.info("round.open_sent model=%s round=%s", model_id, round)

    def _aggregate(self, model: ModelInfo, round: int, deadline: int) -> None:
        model_id = model.model_id
        base = self._round_base(model_id, round)
        rows = self.journal.commitments(model_id, round)
        verified, verdicts, missing = self._check_rows(model, base, rows)
        if missing:
            if not self._store_reachable(base.cid) or not self._past(
                deadline + self.settings.content_grace
            ):
                log.info(
                    "round.waiting_for_content model=%s round=%s missing=%s",
                    model_id,
                    round,
                    len(missing),
                )
                return
            for row in missing:
                verdicts[row.device] = Verdict(
                    Reason.CONTENT_UNAVAILABLE,
                    f"{row.cid} not served within {self.settings.content_grace}s "
                    "after the deadline",
                )
        rejected = {d: (v.reason, v.detail) for d, v in verdicts.items()}
        outcome = compute_outcome(
            schema=base.schema,
            base=base.tensors,
            updates=verified,
            rejected=rejected,
            rule_id=model.aggregation_rule,
            quorum=model.quorum,
            reference_tensors=root_reference(base.tensors, self.settings.root),
            anomaly=self.settings.anomaly,
            root=self.settings.root,
        )
        current = self._current_trust(model_id, list(outcome.verdicts))
        outcome.trust = next_trust(
            outcome,
            {d: current.get(d, 0) for d in outcome.verdicts},
            self.settings.trust_policy,
        )
        outcome.trust = {d: t for d, t in outcome.trust.items() if d in current}
        result = self._publish(model, round, base, rows, outcome)
        with self.journal.transaction() as db:
            for row in rows:
                reason, detail = outcome.verdicts.get(
                    row.device, (Reason.MALFORMED, "no verdict")
                )
                if row.status == "rejected":
                    continue
                verdict_status = "accepted" if reason is Reason.ACCEPTED else "rejected"
                self.journal.set_verdict(
                    db,
                    row.tx_hash,
                    row.log_index,
                    verdict_status,
                    reason.name,
                    detail or None,
                )
            self.journal.set_phase(db, model_id, round, "aggregated", result)
        self._stall("aggregated")
        for row in rows:
            if row.status != "rejected":
                reason, detail = outcome.verdicts[row.device]
                self._log_verdict(row, Verdict(reason, detail), stage="content")
        log.info(
            "round.aggregated model=%s round=%s accepted=%s rejected=%s failed=%s "
            "new_model=%s report=%s",
            model_id,
            round,
            len(outcome.accepted),
            len(outcome.verdicts) - len(outcome.accepted),
            result["failed"],
            result["new_model_cid"],
            result["report_cid"],
        )

    def _check_rows(
        self, model: ModelInfo, base: GlobalModel, rows: list[CommitmentRow]
    ) -> tuple[UpdateStack, dict[str, Verdict], list[CommitmentRow]]:
        """Check standing and content; return verified updates, verdicts, missing.

        Each verified update goes into its row of the stack as soon as it is
        decoded, so at most one update's tensors exist besides the stack.
        """
        verdicts: dict[str, Verdict] = {}
        missing: list[CommitmentRow] = []
        pending = [row for row in rows if row.status != "rejected"]
        verified = UpdateStack(base.schema, len(pending))
        standing = dict(
            zip(
                (id(row) for row in pending),
                check_current_status_many(self.system, model, pending),
                strict=True,
            )
        )
        for row in rows:
            if row.status == "rejected":
                if row.device not in verdicts:
                    verdicts[row.device] = Verdict(Reason[row.reason or "MALFORMED"])
                continue
            status = standing[id(row)]
            if not status.ok:
                verdicts[row.device] = status
                continue
            content = check_content(self.store, model, base.schema, row)
            if content is None:
                missing.append(row)
            elif isinstance(content, Verdict):
                verdicts[row.device] = content
            else:
                verified.add(content)
        return verified, verdicts, missing

    def _publish(
        self,
        model: ModelInfo,
        round: int,
        base: GlobalModel,
        rows: list[CommitmentRow],
        outcome: Any,
    ) -> dict[str, Any]:
        failed = outcome.new_model is None
        if failed:
            new_hash, new_cid = base.sha256, base.cid
        else:
            new_cid = self.store.put(outcome.new_model)
            new_hash = hashlib.sha256(outcome.new_model).digest()
        reference_cid = (
            self.store.put(outcome.reference) if outcome.reference is not None else None
        )
        content = {r.device: r.content_hash for r in rows}
        digest = accepted_digest([(d, content[d]) for d in outcome.accepted])
        header = {
            "format": "ztfm-round-report/1",
            "chain_id": self.system.client.chain_id,
            "model_registry": self.system.deployment.model_registry,
            "model_id": model.model_id,
            "round": round,
            "aggregator": self.account.address,
            "rule": RULE_NAMES[AggregationRule(model.aggregation_rule)],
            "quorum": model.quorum,
            "base_model_hash": "0x" + base.sha256.hex(),
            "base_model_cid": base.cid,
            "new_model_hash": "0x" + new_hash.hex(),
            "new_model_cid": new_cid,
            "reference_cid": reference_cid,
            "accepted_digest": "0x" + digest.hex(),
            "root_loss_check": self.settings.root is not None
            and self.settings.anomaly.root_loss,
            "failed": failed,
        }
        report_rows = []
        for row in rows:
            reason, detail = outcome.verdicts.get(row.device, (Reason.MALFORMED, ""))
            report_rows.append(
                {
                    "device": row.device,
                    "tx_hash": row.tx_hash,
                    "block": row.block,
                    "cid": row.cid,
                    "content_hash": row.content_hash,
                    "sample_count": row.sample_count,
                    "reason": row.reason if row.status == "rejected" else reason.name,
                    "detail": row.detail if row.status == "rejected" else detail,
                    "scores": outcome.scores.get(row.device),
                    "weight": outcome.weights.get(row.device),
                }
            )
        report = report_document(header=header, rows=report_rows, outcome=outcome)
        report_bytes = json.dumps(report, indent=2, sort_keys=True).encode()
        report_cid = self.store.put(report_bytes)
        return {
            **header,
            "accepted_count": len(outcome.accepted),
            "report_cid": report_cid,
            "report_hash": "0x" + hashlib.sha256(report_bytes).hexdigest(),
            "trust": [
                [device, new, int(reason)]
                for device, (_, new, reason) in sorted(outcome.trust.items())
            ],
        }

    # --- 3. chain writes ------------------------------------------------------------

    def _finalize(self, model_id: int, round: int) -> None:
        result = self.journal.result(model_id, round)
        assert result is not None, "an aggregated round always has a result"
        state = round_info(self.system, model_id, round).state
        if state not in (RoundState.FINALIZED, RoundState.FAILED):
            finalize_round(
                self.system,
                self.account,
                model_id,
                round,
                new_model_hash=bytes.fromhex(result["new_model_hash"][2:]),
                new_model_cid=result["new_model_cid"],
                accepted_digest=bytes.fromhex(result["accepted_digest"][2:]),
                accepted_count=result["accepted_count"],
                report_hash=bytes.fromhex(result["report_hash"][2:]),
                report_cid=result["report_cid"],
            )
            self._stall("finalize-sent")
            state = round_info(self.system, model_id, round).state
        with self.journal.transaction() as db:
            self.journal.set_phase(db, model_id, round, "finalized")
        self._stall("finalized")
        self.metrics.inc("rounds_" + state.name.lower())
        log.info(
            "round.finalized model=%s round=%s state=%s accepted=%s new_model=%s "
            "report=%s",
            model_id,
            round,
            state.name.lower(),
            result["accepted_count"],
            result["new_model_cid"],
            result["report_cid"],
        )
        if state is RoundState.FAILED:
            log.warning(
                "round.failed model=%s round=%s accepted=%s quorum=%s: the global "
                "model is kept",
                model_id,
                round,
                result["accepted_count"],
                result["quorum"],
            )

    def _write_trust(self, model_id: int, round: int) -> None:
        result = self.journal.result(model_id, round)
        assert result is not None, "a finalized round always has a result"
        entries = result["trust"]
        for start in range(0, len(entries), TRUST_BATCH):
            chunk = entries[start : start + TRUST_BATCH]
            # Scores are absolute, so re-sending after a crash changes nothing.
            self.system.client.transact(
                self.system.trust.functions.setScores(
                    model_id,
                    [Web3.to_checksum_address(d) for d, _, _ in chunk],
                    [int(score) for _, score, _ in chunk],
                    [int(reason) for _, _, reason in chunk],
                ),
                self.account,
            )
        self._stall("trust-sent")
        with self.journal.transaction() as db:
            self.journal.set_phase(db, model_id, round, "done")
        log.info(
            "trust.written model=%s round=%s devices=%s", model_id, round, len(entries)
        )

    # --- helpers --------------------------------------------------------------------

    def _round_base(self, model_id: int, round: int) -> GlobalModel:
        base = self._bases.get(model_id)
        if base is None:
            base = fetch_base_model(self.system, self.store, model_id)
            self._bases[model_id] = base
        return fetch_round_base(self.system, self.store, model_id, round, base.schema)

    def _current_trust(self, model_id: int, devices: list[str]) -> dict[str, int]:
        """Return current scores of the devices that take part in the model."""
        batch = ReadBatch(self.system.client)
        reads = [
            batch.call(
                self.system.models,
                "isParticipant",
                [model_id, Web3.to_checksum_address(d)],
            )
            for d in devices
        ]
        batch.execute()
        participants = [d for d, read in zip(devices, reads, strict=True) if read.value]
        if not participants:
            return {}
        scores = self.system.client.call(
            self.system.trust.functions.scoresOf(
                [Web3.to_checksum_address(d) for d in participants]
            )
        )
        return dict(zip(participants, (int(s) for s in scores), strict=True))

    def _stall(self, step: str) -> None:
        if self.settings.stall_after == step:
            log.warning("aggregator.stalled_for_test step=%s", step)
            while True:
                time.sleep(3600)

    def _store_reachable(self, known_cid: str) -> bool:
        try:
            return self.store.has(known_cid)
        except StorageError:
            return False

    def _past(self, timestamp: float) -> bool:
        client = self.system.client
        latest = client.read(lambda: client.w3.eth.get_block("latest"))
        return max(int(latest["timestamp"]), int(time.time())) > timestamp

    def _log_verdict(self, row: CommitmentRow, verdict: Verdict, *, stage: str) -> None:
        if verdict.ok:
            if stage == "content":
                self.metrics.inc("updates_accepted")
                log.info(
                    "update.accepted model=%s round=%s device=%s cid=%s tx=%s",
                    row.model_id,
                    row.round,
                    row.device,
                    row.cid,
                    row.tx_hash,
                )
            return
        self.metrics.inc("updates_rejected", verdict.reason.name)
        log.info(
            "update.rejected model=%s round=%s device=%s reason=%s tx=%s detail=%s",
            row.model_id,
            row.round,
            row.device,
            verdict.reason.name,
            row.tx_hash,
            verdict.detail,
        )


def open_journal(home: Path, chain_id: int, account: str) -> Journal:
    """Open the journal of ``account`` on ``chain_id`` under ``home``."""
    return Journal(home / "aggregator" / f"{chain_id}-{account.lower()}.sqlite")
