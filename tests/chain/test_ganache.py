"""Run the chain tests again on Ganache, to catch code that works only on Anvil.

Deselect with ``-m "not ganache"``. On a busy 2-vCPU x86-64 container the Ganache run
took 1.5 to 2.5 minutes, and the same tests took 1 minute on Anvil.
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
    # test_compile.py starts no chain, so a second run would only repeat its
    # 20 s or so.
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/chain",
        "-q",
        "-p",
        "no:cacheprovider",
        "--ignore=tests/chain/test_compile.py",
    ]
    # A new session puts pytest and the Ganache it starts into one process group,
    # so a timeout can stop both.
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        # A wide terminal keeps each error message in pytest's summary of failures.
        env={**os.environ, "ZTFM_TEST_CHAIN": "ganache", "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        output = _stop_group(process)
        tail = "\n".join(output.splitlines()[-TAIL_LINES:])
        pytest.fail(
            f"the chain tests on Ganache timed out after {RUN_TIMEOUT}s; "
            f"the last {TAIL_LINES} lines of output:\n{tail}"
        )
    except BaseException:
        # On Ctrl-C or a pytest-timeout failure, stop the run so that no pytest or
        # Ganache is left running.
        _stop_group(process)
        raise

    tail = "\n".join(output.splitlines()[-TAIL_LINES:])
    assert process.returncode == 0, (
        f"`{' '.join(command[1:])}` with ZTFM_TEST_CHAIN=ganache exited with "
        f"{process.returncode}; the last {TAIL_LINES} lines of output:\n{tail}"
    )


def _stop_group(process: subprocess.Popen[str]) -> str:
    """Stop the run's process group and return its output.

    Sends SIGTERM, then SIGKILL when the group is still running 10 s later.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            output, _ = process.communicate(timeout=10)
            return output
        except subprocess.TimeoutExpired:
            continue
    output, _ = process.communicate()
    return output
