"""Audits re-verify finished rounds from chain data and the store alone."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.aggregator.conftest import Federation
from tests.aggregator.test_reasons import finish_round, report_of, sign_flipped
from tests.chain.conftest import advance_time
from tests.conftest import Roles
from ztfm_chain.aggregator.audit import audit_round
from ztfm_chain.chain.models import close_round, finalize_round, round_info
from ztfm_chain.device.runtime import DeviceRuntime, TrainingSettings
from ztfm_chain.exceptions import UsageError
from ztfm_chain.fl.attacks import flip_labels


def test_audit_agrees_with_honest_aggregator(federation: Federation) -> None:
    round = federation.open_round()
    hostile = federation.devices[-1]
    sign_flipped(federation, hostile, round)
    finish_round(federation, round)
    result = audit_round(
        federation.system, federation.store, federation.model_id, round
    )
    assert result.disagreements == []
    assert result.ok
    assert result.reasons[hostile.device] == "ANOMALOUS"
    assert sorted(d for d, r in result.reasons.items() if r == "ACCEPTED") == sorted(
        d.device for d in federation.devices[:3]
    )


def test_audit_finds_lying_aggregator(federation: Federation) -> None:
    round = federation.open_round()
    for device in federation.devices[:4]:
        device.run_round(federation.model_id)
    # An aggregator that skips the work: it publishes a report that accepts every
    # update and finalizes a model it never computed.
    base = round_info(federation.system, federation.model_id, round).base_model_hash
    forged_model = b"not the aggregate"
    report = {
        "commitments": [
            {"device": d.device, "reason": "ACCEPTED"} for d in federation.devices[:4]
        ],
        "reference_cid": None,
    }
    report_bytes = json.dumps(report).encode()
    close_round(federation.system, Roles.aggregator, federation.model_id, round)
    finalize_round(
        federation.system,
        Roles.aggregator,
        federation.model_id,
        round,
        new_model_hash=hashlib.sha256(forged_model).digest(),
        new_model_cid=federation.store.put(forged_model),
        accepted_digest=b"\x00" * 32,
        accepted_count=4,
        report_hash=hashlib.sha256(report_bytes).digest(),
        report_cid=federation.store.put(report_bytes),
    )
    result = audit_round(
        federation.system, federation.store, federation.model_id, round
    )
    assert not result.ok
    text = "\n".join(result.disagreements)
    assert "accepted digest" in text
    assert "re-aggregated model hashes to" in text
    assert base  # the round trained from the recorded base model


def test_audit_of_open_round_rejected(federation: Federation) -> None:
    round = federation.open_round()
    with pytest.raises(UsageError, match="only a finalized or failed round"):
        audit_round(federation.system, federation.store, federation.model_id, round)
    advance_time(federation.system, 1)


def test_audit_repeats_root_loss_check(federation: Federation) -> None:
    round = federation.open_round()
    hostile = federation.devices[-1]
    flipper = DeviceRuntime(
        federation.system,
        federation.store,
        hostile.key,
        hostile.data,
        flip_labels(hostile.labels),
        relayer=Roles.relayer,
        training=TrainingSettings(epochs=1),
        seed=5,
    )
    flipper.run_round(federation.model_id)
    finish_round(federation, round)
    root = federation.settings.root
    assert root is not None

    with_root = audit_round(
        federation.system, federation.store, federation.model_id, round, root=root
    )
    without_root = audit_round(
        federation.system, federation.store, federation.model_id, round
    )

    report = report_of(federation, round)
    detail = next(
        c["detail"] for c in report["commitments"] if c["device"] == hostile.device
    )
    # Only the root-set loss check flagged it, so the cosine check left no detail.
    assert "root-set loss change" in detail
    assert "norm ratio" not in detail
    assert with_root.disagreements == []
    assert with_root.reasons[hostile.device] == "ANOMALOUS"
    assert without_root.reasons[hostile.device] == "ACCEPTED"
    assert any(
        line.startswith(f"{hostile.device}: auditor finds ACCEPTED")
        for line in without_root.disagreements
    )
    assert "--root-digits" in without_root.disagreements[-1]
