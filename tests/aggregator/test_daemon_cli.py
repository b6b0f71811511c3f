"""`ztfm aggregator run` as a process: wrong chains, logs, metrics and SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.aggregator.conftest import Federation
from tests.aggregator.test_crash import start_daemon, wait_for
from ztfm_chain.chain.anvil import Anvil
from ztfm_chain.chain.deploy import save_manifest


def run_cli(
    *args: str, home: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztfm_chain.cli.main", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "ZTFM_AGGREGATOR_STALL_AFTER": ""},
    )


def test_restarted_chain_stops_daemon_before_sending(
    federation: Federation, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    save_manifest(federation.system.deployment, home)
    with Anvil() as fresh:
        result = run_cli(
            "--rpc-url",
            fresh.url,
            "--store",
            str(federation.store.root),
            "aggregator",
            "run",
            "--key",
            "dev:4",
            "--model",
            str(federation.model_id),
            home=home,
        )
        sent = int(fresh_count(fresh.url))
    assert result.returncode == 4, result.stderr
    assert "no contract code" in result.stderr or "genesis" in result.stderr
    assert "Traceback" not in result.stderr
    assert sent == 0


def fresh_count(url: str) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(json.loads(response.read())["result"], 16)


def test_journal_of_other_chain_rejected(
    federation: Federation, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    save_manifest(federation.system.deployment, home)
    from ztfm_chain.aggregator.journal import Journal

    journal = Journal(federation.journal_path)
    journal.bind(1, "0x" + "ab" * 32, federation.system.deployment.model_registry)
    journal.close()
    result = run_cli(
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
        "--journal",
        str(federation.journal_path),
        home=home,
    )
    assert result.returncode == 4, result.stderr
    assert "belongs to chain_id 1" in result.stderr


def test_json_logs_metrics_and_graceful_stop(
    federation: Federation, tmp_path: Path
) -> None:
    round = federation.open_round()
    for device in federation.devices:
        device.run_round(federation.model_id)
    home = tmp_path / "home"
    save_manifest(federation.system.deployment, home)
    log = tmp_path / "daemon.log"
    command_extra = ["--metrics-port", "0"]
    process = start_daemon(federation, home, log, stall=None, extra=command_extra)
    try:
        wait_for(lambda: '"event": "trust.written"' in log.read_text(), "a round")
        lines = [json.loads(line) for line in log.read_text().splitlines() if line]
        events = {line["event"] for line in lines}
        assert {
            "aggregator.started",
            "round.opened",
            "round.closed",
            "update.accepted",
            "round.aggregated",
            "round.finalized",
            "trust.written",
        } <= events
        accepted = [line for line in lines if line["event"] == "update.accepted"]
        assert len(accepted) == len(federation.devices)
        assert all(line["round"] == str(round) for line in accepted)
        serving = next(line for line in lines if line["event"] == "metrics.serving")
        url = serving["url"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url)
        with urllib.request.urlopen(url, timeout=5) as response:
            page = response.read().decode()
        assert f"ztfm_updates_accepted_total {len(federation.devices)}" in page
        assert "ztfm_rounds_finalized_total 1" in page
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0
    assert '"event": "aggregator.stopped"' in log.read_text()
    time.sleep(0)
