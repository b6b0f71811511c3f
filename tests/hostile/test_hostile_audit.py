"""A hostile aggregator publishes a hostile report; the auditor must not crash.

The nested report is parsed in a child interpreter, so that a crash shows up as
the child's exit code instead of killing pytest.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.aggregator.conftest import Federation
from tests.chain.conftest import advance_time
from tests.conftest import Roles
from ztfm_chain.aggregator.audit import audit_round
from ztfm_chain.chain.models import finalize_round, model_info

REPORTS = {
    "nested-200k": b"[" * 200_000,
    "not-json": b"\xff\xfe not json",
    "commitments-not-list": b'{"commitments": 5}',
    "commitment-not-object": b'{"commitments": [1]}',
    "device-is-list": b'{"commitments": [{"device": [1], "reason": "x"}]}',
    "reference-cid-one-char": b'{"reference_cid": "z"}',
    "base-cid-int": b'{"base_model_cid": 7}',
}


@pytest.mark.parametrize("name", [n for n in REPORTS if n != "nested-200k"])
def test_hostile_report_audited_cleanly(federation: Federation, name: str) -> None:
    round = federation.open_round()
    for device in federation.devices[:3]:
        device.run_round(federation.model_id)
    advance_time(federation.system, 3601)
    report = REPORTS[name]
    report_cid = federation.store.put(report)
    model = model_info(federation.system, federation.model_id)
    finalize_round(
        federation.system,
        Roles.aggregator,
        federation.model_id,
        round,
        new_model_hash=model.global_model_hash,
        new_model_cid=model.global_model_cid,
        accepted_digest=b"\x00" * 32,
        accepted_count=0,
        report_hash=hashlib.sha256(report).digest(),
        report_cid=report_cid,
    )
    # A raw TypeError or IndexError would escape here; a hostile report must end as
    # listed disagreements.
    result = audit_round(
        federation.system, federation.store, federation.model_id, round
    )
    assert not result.ok
    assert result.disagreements


def test_nested_report_does_not_crash_auditor(tmp_path: Path) -> None:
    """The auditor's report parser, in a child interpreter, on 200,000 brackets."""
    script = f"""
import hashlib
from ztfm_chain.aggregator.audit import AuditResult, _fetch_report
from ztfm_chain.storage.embedded import EmbeddedStore
store = EmbeddedStore({str(tmp_path / "store")!r})
data = b"[" * 200_000
args = {{"reportCid": store.put(data), "reportHash": hashlib.sha256(data).digest()}}
result = AuditResult(1, 1, "finalized")
_fetch_report(store, args, result)
print(result.disagreements)
"""
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, (
        f"auditor child exited {child.returncode}: {child.stderr[-300:]}"
    )


def test_failed_round_audited(federation: Federation) -> None:
    """An honest round below quorum, failed by the real daemon, then audited."""
    round = federation.open_round()
    for device in federation.devices[:2]:
        device.run_round(federation.model_id)
    advance_time(federation.system, 3601)
    aggregator = federation.aggregator()
    for _ in range(10):
        aggregator.step()
        if aggregator.journal.phase(federation.model_id, round) == "done":
            break
    result = audit_round(
        federation.system, federation.store, federation.model_id, round
    )
    assert result.state == "failed"
    assert result.ok, result.disagreements
