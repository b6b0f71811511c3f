#!/usr/bin/env python3
"""Benchmark the aggregation rules against simulated attacks on the digits data.

For each data distribution (IID and Dirichlet non-IID), attack and fraction of
malicious devices, every rule runs a simulated federation from the same seeds. The
script prints two Markdown tables and writes them to ``--out``:

1. final test accuracy, mean and standard deviation over the seeds, per rule, with
   plain FedAvg and FedAvg over the honest devices alone as baselines;
2. detection of malicious devices from trust scores after round 5: a device counts
   as flagged when its trust is below the quarantine threshold. Scores are taken
   from the FLTrust run with the root-set reference and from the FLTrust run with
   the coordinate-median reference.

Usage:
    python scripts/bench_robustness.py --quick
    python scripts/bench_robustness.py --out docs/robustness-results.md
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from types import FrameType

import torch

from ztfm_chain.fl.aggregation import (
    CoordinateMedian,
    FedAvg,
    FLTrust,
    MultiKrum,
    TrimmedMean,
)
from ztfm_chain.fl.anomaly import DEFAULT_MAX_NORM_RATIO, DEFAULT_MIN_COSINE
from ztfm_chain.fl.data import load_digits_split
from ztfm_chain.fl.simulation import (
    ATTACKS,
    AttackSettings,
    Federation,
    RuleSetup,
    TrainingSettings,
    Trajectory,
    run_federations,
)
from ztfm_chain.fl.trust import TrustPolicy
from ztfm_chain.fl.validation import (
    DEFAULT_ROOT_LOSS_MARGIN,
    DEFAULT_ROOT_LOSS_MAX_COSINE,
    DEFAULT_ROOT_LOSS_REFERENCE_SHARE,
    DEFAULT_ROOT_LOSS_STEP,
)

N_DEVICES = 20
TRIM_BETA = 0.2
# Multi-Krum needs n > 2f + 2, so f = 8 is the largest it tolerates with 20 devices.
KRUM_BYZANTINE = (N_DEVICES - 3) // 2
DETECTION_ROUND = 5
HONEST_BASELINE = "fedavg-honest"


@dataclass(frozen=True)
class Mode:
    """Distributions, attacks, malicious fractions, seeds and rounds of a run."""

    distributions: tuple[str, ...]
    attacks: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    rounds: int


FULL = Mode(
    distributions=("iid", "dirichlet"),
    attacks=ATTACKS,
    fractions=(0.0, 0.1, 0.3, 0.45),
    seeds=(0, 1, 2),
    rounds=20,
)
QUICK = Mode(
    distributions=("dirichlet",),
    attacks=("none", "sign-flip-x5", "scaling", "label-flip"),
    fractions=(0.0, 0.3),
    seeds=(0,),
    rounds=DETECTION_ROUND,
)


def rule_setups() -> list[RuleSetup]:
    """Return the aggregator configurations compared, baselines first."""
    return [
        RuleSetup("fedavg", FedAvg()),
        RuleSetup(HONEST_BASELINE, FedAvg(), honest_only=True),
        RuleSetup(
            "fedavg-filtered", FedAvg(), root_reference=True, filter_anomalies=True
        ),
        RuleSetup("trimmed-mean", TrimmedMean(beta=TRIM_BETA)),
        RuleSetup("median", CoordinateMedian()),
        RuleSetup("multi-krum", MultiKrum(n_byzantine=KRUM_BYZANTINE)),
        RuleSetup("fltrust", FLTrust(), root_reference=True),
        RuleSetup("fltrust-median", FLTrust()),
    ]


@dataclass(frozen=True)
class Scenario:
    distribution: str
    attack: str
    fraction: float


@dataclass
class Outcome:
    """Per-rule final accuracies and detection counts of one scenario over seeds."""

    accuracies: dict[str, list[float]]
    diverged: dict[str, int]
    detection: dict[str, list[tuple[int, int, int, int]]]


@dataclass(frozen=True)
class RunRecord:
    """Result of one rule in one scenario for one seed."""

    scenario: Scenario
    seed: int
    label: str
    accuracy: float
    diverged: bool
    confusion: tuple[int, int, int, int]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    mode = QUICK if args.quick else FULL
    if args.rounds is not None:
        mode = replace(mode, rounds=args.rounds)
    if args.seeds is not None:
        mode = replace(mode, seeds=tuple(range(args.seeds)))
    try:
        mode = _narrowed(mode, args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if mode.rounds < DETECTION_ROUND:
        print(
            f"error: --rounds must be at least {DETECTION_ROUND} for the detection "
            "table",
            file=sys.stderr,
        )
        return 2
    if args.jobs < 1:
        print("error: --jobs must be at least 1", file=sys.stderr)
        return 2

    started = time.perf_counter()
    outcomes = run_benchmark(mode, jobs=args.jobs, threads=args.threads)
    elapsed = time.perf_counter() - started
    command = " ".join(["scripts/bench_robustness.py", *sys.argv[1:]])
    report = format_report(mode, outcomes, elapsed, args.threads, command)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def run_benchmark(mode: Mode, *, jobs: int, threads: int) -> dict[Scenario, Outcome]:
    """Run every scenario of ``mode`` and return the outcomes by scenario.

    The work is split into one unit per (seed, distribution); with ``jobs`` > 1 the
    units run in that many worker processes.
    """
    units = [(mode, seed, dist) for seed in mode.seeds for dist in mode.distributions]
    records: list[RunRecord] = []
    if jobs == 1:
        for unit in units:
            records += run_unit(*unit)
    else:
        # Pool.__exit__ terminates the workers, also when SIGTERM or Ctrl-C
        # interrupts the wait, so no worker outlives an interrupted run.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        with get_context("spawn").Pool(
            jobs, initializer=torch.set_num_threads, initargs=(threads,)
        ) as pool:
            for unit_records in pool.starmap(run_unit, units, chunksize=1):
                records += unit_records

    labels = [setup.label for setup in rule_setups()]
    outcomes = {
        scenario: Outcome(
            accuracies={label: [] for label in labels},
            diverged={label: 0 for label in labels},
            detection={"fltrust": [], "fltrust-median": []},
        )
        for scenario in _scenarios(mode)
    }
    for record in sorted(records, key=lambda r: r.seed):
        outcome = outcomes[record.scenario]
        outcome.accuracies[record.label].append(record.accuracy)
        outcome.diverged[record.label] += int(record.diverged)
        if record.label in outcome.detection:
            outcome.detection[record.label].append(record.confusion)
    return outcomes


def run_unit(mode: Mode, seed: int, distribution: str) -> list[RunRecord]:
    """Run every scenario of one distribution with one seed."""
    split = load_digits_split(seed=0)
    policy = TrustPolicy()
    honest_cache: dict[float, Trajectory] = {}
    scenarios = [s for s in _scenarios(mode) if s.distribution == distribution]
    records = []
    for number, scenario in enumerate(scenarios, start=1):
        federation = Federation.build(
            split,
            n_devices=N_DEVICES,
            distribution=distribution,
            malicious_fraction=scenario.fraction,
            seed=seed,
        )
        setups = rule_setups()
        # Honest devices behave the same under every attack, so the honest-only
        # baseline runs once per fraction.
        pending = [
            setup
            for setup in setups
            if not (
                setup.label == HONEST_BASELINE and scenario.fraction in honest_cache
            )
        ]
        trajectories = dict(
            zip(
                [setup.label for setup in pending],
                run_federations(
                    federation,
                    pending,
                    attack=scenario.attack,
                    rounds=mode.rounds,
                    training=TrainingSettings(),
                    attack_settings=AttackSettings(),
                    trust_policy=policy,
                ),
                strict=True,
            )
        )
        if HONEST_BASELINE in trajectories:
            honest_cache[scenario.fraction] = trajectories[HONEST_BASELINE]
        trajectories[HONEST_BASELINE] = honest_cache[scenario.fraction]
        for setup in setups:
            trajectory = trajectories[setup.label]
            records.append(
                RunRecord(
                    scenario=scenario,
                    seed=seed,
                    label=setup.label,
                    accuracy=trajectory.accuracy[-1],
                    diverged=trajectory.diverged_round is not None,
                    confusion=_confusion(trajectory, federation, policy),
                )
            )
        print(
            f"seed {seed} {distribution}: scenario {number}/{len(scenarios)} "
            f"({scenario.attack}, {scenario.fraction:.0%}) done",
            file=sys.stderr,
            flush=True,
        )
    return records


def format_report(
    mode: Mode,
    outcomes: dict[Scenario, Outcome],
    elapsed: float,
    threads: int,
    command: str,
) -> str:
    """Render the settings and both tables as Markdown."""
    labels = [setup.label for setup in rule_setups()]
    training = TrainingSettings()
    attacks = AttackSettings()
    policy = TrustPolicy()
    lines = [
        "# Robustness of the aggregation rules on scikit-learn digits",
        "",
        f"Generated by `{command}` in {elapsed:.0f} s on {threads} torch thread(s), "
        f"torch {torch.__version__}.",
        "",
        f"- {N_DEVICES} devices share 1,337 training digits; 100 digits form the root "
        "set and 360 the test set.",
        f"- Distributions: {', '.join(mode.distributions)} (Dirichlet alpha 0.5).",
        f"- {mode.rounds} rounds; seeds {', '.join(map(str, mode.seeds))}. Local "
        f"training: {training.epochs} epochs, batch {training.batch_size}, SGD lr "
        f"{training.lr}; server learning rate 1.",
        f"- Rules: trimmed-mean beta {TRIM_BETA}; multi-krum f {KRUM_BYZANTINE}, "
        f"m = n - f; fltrust uses the root-set update as reference, fltrust-median "
        "the coordinate-wise median; fedavg-filtered drops updates flagged against "
        f"the root-set update (cosine <= {DEFAULT_MIN_COSINE} or norm ratio > "
        f"{DEFAULT_MAX_NORM_RATIO}, or the root-set loss check: loss change at step "
        f"{DEFAULT_ROOT_LOSS_STEP:g} above {DEFAULT_ROOT_LOSS_MARGIN:g} + "
        f"{DEFAULT_ROOT_LOSS_REFERENCE_SHARE:g} x the root-set update's change, with "
        f"cosine < {DEFAULT_ROOT_LOSS_MAX_COSINE:g}); fedavg-honest averages the "
        "honest devices only.",
        f"- Attacks: sign-flip x1 and x{attacks.strong_sign_flip_scale:g}; gaussian "
        f"noise std {attacks.noise_std}; scaling x{attacks.scaling_factor:g}; "
        "model-replacement boosts a label-flipped update by n / malicious; sybil "
        "sends one sign-flipped update from every attacker; inflated-count sends a "
        f"sign-flipped update and claims {attacks.claimed_sample_count} samples.",
        "",
        "## Final test accuracy (mean ± standard deviation over seeds)",
        "",
        "A dagger marks a cell where at least one seed diverged (non-finite "
        "weights); a diverged model scores its accuracy at the round it broke.",
        "",
        "| distribution | attack | malicious | " + " | ".join(labels) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in labels) + " |",
    ]
    for scenario, outcome in outcomes.items():
        cells = [
            _mean_spread(outcome.accuracies[label])
            + (" †" if outcome.diverged[label] else "")
            for label in labels
        ]
        lines.append(
            f"| {scenario.distribution} | {scenario.attack} | "
            f"{scenario.fraction:.0%} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        f"## Detection from trust scores after round {DETECTION_ROUND}",
        "",
        f"Flagged: trust below {policy.quarantine_below_bps} bps (start "
        f"{policy.initial_bps}, EWMA history weight {policy.history_weight_bps} bps, "
        "behaviour = 5000 + 5000 x clipped cosine, 0 when flagged). The root columns "
        "use the root-set checks, the root-set loss check included; the median "
        "columns use the cosine and norm-ratio checks against the coordinate-wise "
        "median. Means over seeds; precision is left out of the mean for a seed "
        "that flagged nobody, and 'n/a' means it was undefined for every seed.",
        "",
        "| distribution | attack | malicious | root precision | root recall | "
        "root FPR | median precision | median recall | median FPR |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario, outcome in outcomes.items():
        cells = []
        for label in ("fltrust", "fltrust-median"):
            cells += _detection_cells(outcome.detection[label])
        lines.append(
            f"| {scenario.distribution} | {scenario.attack} | "
            f"{scenario.fraction:.0%} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def _narrowed(mode: Mode, args: argparse.Namespace) -> Mode:
    """Apply --distributions, --attacks and --fractions, or raise ValueError."""
    if args.distributions is not None:
        names = tuple(args.distributions.split(","))
        unknown = [name for name in names if name not in ("iid", "dirichlet")]
        if unknown:
            raise ValueError(f"unknown distributions {unknown}; use iid, dirichlet")
        mode = replace(mode, distributions=names)
    if args.attacks is not None:
        names = tuple(args.attacks.split(","))
        unknown = [name for name in names if name not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attacks {unknown}; use {', '.join(ATTACKS)}")
        mode = replace(mode, attacks=names)
    if args.fractions is not None:
        try:
            fractions = tuple(float(value) for value in args.fractions.split(","))
        except ValueError:
            raise ValueError(
                f"--fractions must be comma-separated numbers, got {args.fractions!r}"
            ) from None
        if not all(0 <= value < 1 for value in fractions):
            raise ValueError(f"fractions must be in [0, 1), got {args.fractions}")
        mode = replace(mode, fractions=fractions)
    return mode


def _scenarios(mode: Mode) -> list[Scenario]:
    scenarios = []
    for distribution in mode.distributions:
        for fraction in mode.fractions:
            for attack in mode.attacks:
                # With no attackers every attack is the same run, and the attack
                # "none" with attackers is the same as no attackers.
                if (fraction == 0) != (attack == "none"):
                    continue
                scenarios.append(Scenario(distribution, attack, fraction))
    return scenarios


def _confusion(
    trajectory: Trajectory, federation: Federation, policy: TrustPolicy
) -> tuple[int, int, int, int]:
    """Return (true positives, false positives, malicious, honest) at round 5."""
    trust = trajectory.trust[DETECTION_ROUND - 1]
    flagged = {
        d for d, score in enumerate(trust) if score < policy.quarantine_below_bps
    }
    true_positives = len(flagged & federation.malicious)
    false_positives = len(flagged - federation.malicious)
    return (
        true_positives,
        false_positives,
        len(federation.malicious),
        len(federation.honest),
    )


def _detection_cells(counts: list[tuple[int, int, int, int]]) -> list[str]:
    precisions = [tp / (tp + fp) for tp, fp, _, _ in counts if tp + fp > 0]
    recalls = [tp / malicious for tp, _, malicious, _ in counts if malicious > 0]
    rates = [fp / honest for _, fp, _, honest in counts if honest > 0]
    return [_mean_or_dash(precisions), _mean_or_dash(recalls), _mean_or_dash(rates)]


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _mean_or_dash(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f}" if values else "n/a"


def _mean_spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="run 4 scenarios on non-IID data with 1 seed and 5 rounds",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the Markdown report here"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per run (full: 20, quick: 5)"
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="number of seeds (full: 3, quick: 1)"
    )
    parser.add_argument(
        "--distributions",
        default=None,
        help="comma-separated subset of iid,dirichlet (default: the mode's)",
    )
    parser.add_argument(
        "--attacks",
        default=None,
        help="comma-separated attack names, 'none' included (default: the mode's)",
    )
    parser.add_argument(
        "--fractions",
        default=None,
        help="comma-separated malicious fractions in [0, 1), e.g. 0,0.3 "
        "(default: the mode's)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes; each runs one (seed, distribution) at a time",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads per process; the models are small, so the default is 1",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
