"""Package-wide properties that no single module owns."""

from __future__ import annotations

import subprocess
import sys


def test_deep_json_raises_instead_of_crashing() -> None:
    # py_ecc raises the recursion limit on import; the package must undo that, or a
    # hostile peer's deeply nested JSON kills the process with a segmentation fault.
    code = (
        "import json, ztfm_chain.cli.main, ztfm_chain.aggregator.daemon\n"
        "try:\n"
        "    json.loads('[' * 300000)\n"
        "except RecursionError:\n"
        "    print('recursion error raised')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-500:])
    assert "recursion error raised" in result.stdout


def test_cli_anomaly_defaults_match_library() -> None:
    from ztfm_chain.aggregator.rounds import AnomalySettings
    from ztfm_chain.cli import aggregator

    defaults = AnomalySettings()
    assert defaults.min_cosine == aggregator.DEFAULT_MIN_COSINE
    assert defaults.max_norm_ratio == aggregator.DEFAULT_MAX_NORM_RATIO
