"""kill -9 the daemon at each step, restart it, and check nothing is lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.aggregator.conftest import Federation
from ztfm_chain.aggregator.journal import Journal
from ztfm_chain.chain.deploy import save_manifest
from ztfm_chain.chain.events import iter_events
from ztfm_chain.chain.models import RoundState, round_info

STEPS = ["events", "aggregated", "finalize-sent", "finalized", "trust-sent"]


def start_daemon(
    federation: Federation,
    home: Path,
    log: Path,
    stall: str | None,
    extra: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "ztfm_chain.cli.main",
        "--home",
        str(home),
        "--rpc-url",
        federation.system.client.url,
        "--store",
        str(federation.store.root),
        "aggregator",
        "run",
        "--key",
        "dev:4",
        "--model",
        str(federation.model_id),
        "--close-after",
        str(len(federation.devices)),
        "--poll-interval",
        "0.05",
        "--content-grace",
        "0",
        "--journal",
        str(federation.journal_path),
        "--log-format",
        "json",
        *(extra or []),
    ]
    env = {**os.environ, "ZTFM_AGGREGATOR_STALL_AFTER": stall or ""}
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        stdin=subprocess.DEVNULL,
        env=env,
    )


def wait_for(condition: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_step_then_restart(
    federation: Federation, tmp_path: Path, step: str
) -> None:
    system = federation.system
    round = federation.open_round()
    for device in federation.devices:
        device.run_round(federation.model_id)
    home = tmp_path / "home"
    save_manifest(system.deployment, home)
    log = tmp_path / "daemon.log"
    first = start_daemon(federation, home, log, stall=step)
    try:
        wait_for(lambda: f'"step": "{step}"' in log.read_text(), f"the stall at {step}")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL

    second = start_daemon(federation, home, log, stall=None)
    try:
        journal = Journal(federation.journal_path)
        wait_for(
            lambda: journal.phase(federation.model_id, round) == "done",
            "the restarted daemon to finish the round",
        )
        journal.close()
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    assert second.returncode == 0, log.read_text()[-2000:]
    assert '"event": "aggregator.stopped"' in log.read_text()

    info = round_info(system, federation.model_id, round)
    assert info.state is RoundState.FINALIZED
    assert info.accepted_count == len(federation.devices)
    head = system.client.w3.eth.block_number
    start = system.deployment.deployed_at_block
    finalized = list(
        iter_events(system.client, system.models.events.RoundFinalized, start, head)
    )
    assert len(finalized) == 1
    changes = Counter(
        e["args"]["device"]
        for e in iter_events(
            system.client, system.trust.events.TrustScoreChanged, start, head
        )
    )
    assert set(changes) == {d.device for d in federation.devices}
    assert set(changes.values()) == {1}, changes
    journal = Journal(federation.journal_path)
    rows = journal.commitments(federation.model_id, round)
    journal.close()
    assert len(rows) == len(federation.devices)
    assert {r.status for r in rows} == {"accepted"}
