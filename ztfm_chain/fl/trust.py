"""Device trust scores in basis points (0 to 10,000), as stored on chain.

All arithmetic is on integers with floor division, so that an aggregator, an
auditor and a contract compute the same scores. Each round, a device that submitted
an update gets a behaviour score (0 when flagged, else 5000 to 10,000 by its cosine
to the reference update), and its trust moves towards it by an exponentially weighted
moving average (EWMA). A rise is capped per round, so a quarantined device recovers
slowly; a fall is not capped. A provenance failure subtracts a fixed penalty per
reason code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ztfm_chain.exceptions import UsageError

__all__ = [
    "DEFAULT_PENALTIES_BPS",
    "MAX_BPS",
    "TrustPolicy",
    "apply_penalty",
    "behaviour_bps",
    "is_quarantined",
    "update_trust",
]

MAX_BPS = 10_000

# Penalty per provenance failure, by aggregator reason code. Forged or substituted
# content costs the most. A stale base model or wrong round can come from an honest
# device that lagged, so it costs little. Codes that are not the device's fault
# (CONTENT_UNAVAILABLE, TRUST_TOO_LOW) are absent and cost nothing. ANOMALOUS is
# absent because the behaviour score of 0 already lowers the trust.
DEFAULT_PENALTIES_BPS: Mapping[str, int] = MappingProxyType(
    {
        "BAD_SIGNATURE": 5000,
        "CID_MISMATCH": 5000,
        "HASH_MISMATCH": 5000,
        "DUPLICATE": 2000,
        "MALFORMED": 3000,
        "TOO_LARGE": 3000,
        "NON_FINITE": 3000,
        "SCHEMA_MISMATCH": 2000,
        "BAD_SAMPLE_COUNT": 2000,
        "WRONG_ROUND": 500,
        "STALE_BASE_MODEL": 500,
    }
)


@dataclass(frozen=True)
class TrustPolicy:
    """Parameters of the trust maths, all in basis points.

    - ``initial_bps`` (5000): trust of a newly enrolled device.
    - ``history_weight_bps`` (6000): weight of the old score in the EWMA; the new
      behaviour gets ``10000 - history_weight_bps``.
    - ``quarantine_below_bps`` (1000): scores below this are quarantined. Honest
      non-IID devices can have cosines near 0.1 to the reference, which the EWMA
      maps to about 1000, so a higher threshold would quarantine honest devices.
    - ``max_rise_per_round_bps`` (500): the largest rise in one round, so a device
      at 0 needs at least two rounds to leave quarantine and ten to reach 5000.
    - ``penalties_bps``: penalty per provenance reason code, see
      :data:`DEFAULT_PENALTIES_BPS`; codes not listed cost nothing.
    """

    initial_bps: int = 5000
    history_weight_bps: int = 6000
    quarantine_below_bps: int = 1000
    max_rise_per_round_bps: int = 500
    penalties_bps: Mapping[str, int] = field(
        default_factory=lambda: DEFAULT_PENALTIES_BPS
    )

    def __post_init__(self) -> None:
        for name in ("initial_bps", "history_weight_bps", "quarantine_below_bps"):
            _check_bps(name, getattr(self, name))
        _check_bps("max_rise_per_round_bps", self.max_rise_per_round_bps)
        for reason, penalty in self.penalties_bps.items():
            _check_bps(f"penalty for {reason}", penalty)


def behaviour_bps(cosine: float, *, anomalous: bool) -> int:
    """Map an update's cosine to the reference to a behaviour score.

    behaviour = 0 if the update was flagged, else
    floor(5000 + 5000 * clip(cosine, 0, 1)).

    An update that passed the behavioural checks scores at least 5000: near
    convergence, honest non-IID updates are small and their cosines to the root-set
    update fall towards 0, and a pure cosine score then pulled honest devices below
    the quarantine threshold within 20 rounds of the digits demo.
    """
    if anomalous:
        return 0
    if cosine != cosine:  # NaN
        raise UsageError("cosine is NaN")
    clipped = min(max(cosine, 0.0), 1.0)
    return int(MAX_BPS // 2 + clipped * (MAX_BPS // 2))


def update_trust(old_bps: int, behaviour: int, policy: TrustPolicy) -> int:
    """Return the trust after one round with the given behaviour score.

    ewma = floor((old * w + behaviour * (10000 - w)) / 10000), w = history weight;
    new = min(ewma, old + max_rise_per_round_bps).
    """
    _check_bps("old_bps", old_bps)
    _check_bps("behaviour", behaviour)
    weight = policy.history_weight_bps
    ewma = (old_bps * weight + behaviour * (MAX_BPS - weight)) // MAX_BPS
    return min(ewma, old_bps + policy.max_rise_per_round_bps)


def apply_penalty(old_bps: int, reason: str, policy: TrustPolicy) -> int:
    """Subtract the penalty for a provenance failure: max(0, old - penalty[reason])."""
    _check_bps("old_bps", old_bps)
    return max(0, old_bps - policy.penalties_bps.get(reason, 0))


def is_quarantined(trust_bps: int, policy: TrustPolicy) -> bool:
    """Return whether the score is below the quarantine threshold."""
    _check_bps("trust_bps", trust_bps)
    return trust_bps < policy.quarantine_below_bps


def _check_bps(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 <= value <= MAX_BPS
    ):
        raise UsageError(f"{name} must be an int in 0..{MAX_BPS}, got {value!r}")
