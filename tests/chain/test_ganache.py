"""Run the chain tests again on Ganache, to catch code that works only on Anvil.

Deselect with ``-m "not ganache"``. The run takes about 1.5 minutes (measured on an
x86-64 container with 4 vCPUs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Seconds the Ganache run may take before the test stops it and fails.
RUN_TIMEOUT = 180
TAIL_LINES = 60

pytestmark = [
    pytest.mark.ganache,
    # The run below sets ZTFM_TEST_CHAIN=ganache, so this guard also keeps the test
    # from starting itself again inside that run.
    pytest.mark.skipif(
        os.environ.get("ZTFM_TEST_CHAIN") == "ganache",
        reason="this session already runs on Ganache",
    ),
]


def test_chain_suite_passes_on_ganache() -> None:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/chain",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    # A new session puts pytest and the Ganache it starts into one process group,
    # so a timeout can stop both.
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env={**os.environ, "ZTFM_TEST_CHAIN": "ganache"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate()
        tail = "\n".join(output.splitlines()[-TAIL_LINES:])
        pytest.fail(
            f"the chain tests on Ganache timed out after {RUN_TIMEOUT}s; "
            f"the last {TAIL_LINES} lines of output:\n{tail}"
        )

    tail = "\n".join(output.splitlines()[-TAIL_LINES:])
    assert process.returncode == 0, (
        f"`{' '.join(command[1:])}` with ZTFM_TEST_CHAIN=ganache exited with "
        f"{process.returncode}; the last {TAIL_LINES} lines of output:\n{tail}"
    )
