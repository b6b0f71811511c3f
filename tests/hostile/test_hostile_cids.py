"""Hostile CID strings and sample counts in commitments the contract accepts.

The contract stores any string as the CID. Each test commits one hostile update
beside three honest ones and expects the honest updates to be aggregated into a
finalized round and the hostile one to be rejected.
"""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from multiformats import CID, multihash

from tests.aggregator.conftest import Federation
from tests.aggregator.test_reasons import (
    HONEST,
    base_hash,
    encoded,
    finish_round,
    honest_delta,
    report_of,
)
from tests.chain.conftest import advance_time
from tests.conftest import Roles
from ztfm_chain.aggregator.daemon import Aggregator
from ztfm_chain.chain.models import RoundState, round_info
from ztfm_chain.device.runtime import DeviceRuntime
from ztfm_chain.exceptions import ZtfmError
from ztfm_chain.identity.commitments import Commitment, sign_commitment, submit


def commit_with_cid(
    federation: Federation, device: DeviceRuntime, round: int, cid: str
) -> None:
    """Store a valid update and commit to it under ``cid``, signed by the device."""
    payload = encoded(federation, round, honest_delta(device))
    federation.store.put(payload)
    commitment = Commitment(
        model_id=federation.model_id,
        round=round,
        device=device.device,
        content_hash=hashlib.sha256(payload).digest(),
        cid=cid,
        sample_count=50,
        base_model_hash=base_hash(federation, round),
    )
    signature = sign_commitment(federation.system, device.key, commitment)
    submit(federation.system, Roles.relayer, commitment, signature)


def run_like_daemon(federation: Federation, round: int) -> Aggregator:
    """Let the honest devices commit, then run passes as Aggregator.run does.

    Aggregator.run logs a ZtfmError of one pass and tries again at the next.
    """
    for device in federation.devices[:HONEST]:
        device.run_round(federation.model_id)
    advance_time(federation.system, 3601)
    aggregator = federation.aggregator()
    errors = []
    for _ in range(6):
        try:
            aggregator.step()
        except ZtfmError as exc:
            errors.append(str(exc)[:200])
        if aggregator.journal.phase(federation.model_id, round) == "done":
            break
    assert errors == [], f"{len(errors)} passes failed, first: {errors[0]}"
    return aggregator


def dag_cbor_cid() -> str:
    digest = multihash.wrap(hashlib.sha256(b"x").digest(), "sha2-256")
    return str(CID("base32", 1, "dag-cbor", digest))


CASES = {
    "not-a-cid": "not-a-cid",
    "ten-kb-cid": "b" + "a" * 10_000,
    "dag-cbor-cid": dag_cbor_cid(),
    "empty-cid": "",
    "multibase-prefix-only": "z",
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_cid_does_not_block_round(federation: Federation, name: str) -> None:
    round = federation.open_round()
    hostile = federation.devices[-1]
    commit_with_cid(federation, hostile, round, CASES[name])
    aggregator = run_like_daemon(federation, round)
    phase = aggregator.journal.phase(federation.model_id, round)
    assert phase == "done"
    report = report_of(federation, round)
    by_device = {row["device"]: row for row in report["commitments"]}
    assert by_device[hostile.device]["reason"] != "ACCEPTED"
    assert len(report["accepted"]) == HONEST


def test_daemon_survives_one_char_cid(federation: Federation) -> None:
    """Aggregator.run, as `ztfm aggregator run` calls it, with a CID of "z"."""
    round = federation.open_round()
    hostile = federation.devices[-1]
    commit_with_cid(federation, hostile, round, "z")
    for device in federation.devices[:HONEST]:
        device.run_round(federation.model_id)
    advance_time(federation.system, 3601)
    aggregator = federation.aggregator()
    stop = threading.Event()
    crashed: list[BaseException] = []

    def target() -> None:
        try:
            aggregator.run(stop)
        except BaseException as exc:
            crashed.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and thread.is_alive():
        if aggregator.journal.phase(federation.model_id, round) == "done":
            break
        time.sleep(0.2)
    stop.set()
    thread.join(10)
    assert crashed == [], f"Aggregator.run stopped on {crashed[0]!r}"
    assert aggregator.journal.phase(federation.model_id, round) == "done"
    report = report_of(federation, round)
    by_device = {row["device"]: row for row in report["commitments"]}
    assert by_device[hostile.device]["reason"] == "MALFORMED"
    assert len(report["accepted"]) == HONEST


def test_uint32_max_sample_count_rejected(federation: Federation) -> None:
    round = federation.open_round()
    hostile = federation.devices[-1]
    count = 2**32 - 1
    payload = encoded(federation, round, honest_delta(hostile), sample_count=count)
    cid = federation.store.put(payload)
    commitment = Commitment(
        model_id=federation.model_id,
        round=round,
        device=hostile.device,
        content_hash=hashlib.sha256(payload).digest(),
        cid=cid,
        sample_count=count,
        base_model_hash=base_hash(federation, round),
    )
    signature = sign_commitment(federation.system, hostile.key, commitment)
    submit(federation.system, Roles.relayer, commitment, signature)
    finish_round(federation, round)
    report = report_of(federation, round)
    by_device = {row["device"]: row for row in report["commitments"]}
    assert by_device[hostile.device]["reason"] == "BAD_SAMPLE_COUNT"
    state = round_info(federation.system, federation.model_id, round).state
    assert state is RoundState.FINALIZED
