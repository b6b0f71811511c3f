"""Trust maths: EWMA, penalties, quarantine and capped recovery."""

from __future__ import annotations

import pytest

from ztfm_chain.exceptions import UsageError
from ztfm_chain.fl.trust import (
    DEFAULT_PENALTIES_BPS,
    TrustPolicy,
    apply_penalty,
    behaviour_bps,
    is_quarantined,
    update_trust,
)

POLICY = TrustPolicy()
NO_CAP = TrustPolicy(max_rise_per_round_bps=10_000)


@pytest.mark.parametrize(
    ("cosine", "anomalous", "expected"),
    [
        pytest.param(0.73, False, 8650, id="positive"),
        pytest.param(1.0, False, 10_000, id="one"),
        pytest.param(0.0, False, 5000, id="zero-is-floor"),
        pytest.param(-0.4, False, 5000, id="negative-clips-to-floor"),
        pytest.param(0.99, True, 0, id="anomalous-is-zero"),
    ],
)
def test_behaviour_maps_clipped_cosine(
    cosine: float, anomalous: bool, expected: int
) -> None:
    assert behaviour_bps(cosine, anomalous=anomalous) == expected


@pytest.mark.parametrize(
    ("old", "behaviour", "expected"),
    [
        # floor((5000 * 6000 + 0 * 4000) / 10000)
        pytest.param(5000, 0, 3000, id="fall"),
        # floor((4000 * 6000 + 5000 * 4000) / 10000)
        pytest.param(4000, 5000, 4400, id="rise"),
        # floor((3333 * 6000 + 1 * 4000) / 10000) = floor(2000.2)
        pytest.param(3333, 1, 2000, id="floors"),
        pytest.param(7000, 7000, 7000, id="steady"),
    ],
)
def test_ewma_hand_computed_cases(old: int, behaviour: int, expected: int) -> None:
    assert update_trust(old, behaviour, NO_CAP) == expected


def test_rise_is_capped_per_round() -> None:
    # The EWMA gives floor((1000 * 6000 + 10000 * 4000) / 10000) = 4600,
    # but a round may add at most 500.
    assert update_trust(1000, 10_000, POLICY) == 1500


def test_fall_is_not_capped() -> None:
    assert update_trust(9000, 0, POLICY) == 5400


def test_recovery_capped_from_zero() -> None:
    trust = 0
    history = []
    for _ in range(10):
        trust = update_trust(trust, 10_000, POLICY)
        history.append(trust)

    assert history == [500 * i for i in range(1, 11)]


def test_bad_behaviour_leads_to_quarantine() -> None:
    trust = POLICY.initial_bps
    rounds = 0
    while not is_quarantined(trust, POLICY):
        trust = update_trust(trust, 0, POLICY)
        rounds += 1

    # 5000 -> 3000 -> 1800 -> 1080 -> 648
    assert rounds == 4
    assert trust == 648


def test_quarantine_threshold_is_exclusive() -> None:
    assert is_quarantined(999, POLICY)
    assert not is_quarantined(1000, POLICY)


@pytest.mark.parametrize(
    ("old", "reason", "expected"),
    [
        pytest.param(8000, "BAD_SIGNATURE", 3000, id="bad-signature"),
        pytest.param(8000, "NON_FINITE", 5000, id="non-finite"),
        pytest.param(8000, "STALE_BASE_MODEL", 7500, id="stale-base"),
        pytest.param(1000, "HASH_MISMATCH", 0, id="floors-at-zero"),
        pytest.param(8000, "CONTENT_UNAVAILABLE", 8000, id="outage-costs-nothing"),
    ],
)
def test_penalty_per_reason(old: int, reason: str, expected: int) -> None:
    assert apply_penalty(old, reason, POLICY) == expected


def test_custom_penalties_replace_defaults() -> None:
    policy = TrustPolicy(penalties_bps={"MALFORMED": 100})

    assert apply_penalty(5000, "MALFORMED", policy) == 4900
    assert apply_penalty(5000, "BAD_SIGNATURE", policy) == 5000


def test_default_penalties_are_read_only() -> None:
    with pytest.raises(TypeError):
        DEFAULT_PENALTIES_BPS["MALFORMED"] = 0  # type: ignore[index]


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"initial_bps": 10_001}, id="initial-above-max"),
        pytest.param({"history_weight_bps": -1}, id="negative-weight"),
        pytest.param({"quarantine_below_bps": 1.5}, id="float-threshold"),
        pytest.param({"penalties_bps": {"MALFORMED": 20_000}}, id="penalty-above-max"),
    ],
)
def test_policy_rejects_invalid_fields(fields: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        TrustPolicy(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("old", "behaviour"),
    [
        pytest.param(-1, 0, id="negative-old"),
        pytest.param(0, 10_001, id="behaviour-above-max"),
    ],
)
def test_update_trust_rejects_out_of_range(old: int, behaviour: int) -> None:
    with pytest.raises(UsageError):
        update_trust(old, behaviour, POLICY)
