"""Simulated federated rounds on the digits data with honest and malicious devices.

Each round, every device trains the global model on its own data with
:func:`train_local_many`, malicious devices replace their update according to the
attack, the aggregator scores the updates against a reference, moves each device's
trust score, aggregates with the configured rule and adds the aggregate to the
global model (server learning rate 1). Used by the robustness tests and by
``scripts/bench_robustness.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ztfm_chain.exceptions import UsageError
from ztfm_chain.fl.aggregation import AggregationRule, coordinate_median
from ztfm_chain.fl.anomaly import flag_anomalies, score_updates
from ztfm_chain.fl.attacks import (
    flip_labels,
    gaussian_noise,
    inflate_sample_count,
    model_replacement,
    scale_update,
    sign_flip,
    sybil_copies,
)
from ztfm_chain.fl.data import DigitsSplit, dirichlet_split, iid_split
from ztfm_chain.fl.models import DIGITS_CLASSES, DIGITS_WIDTHS, init_mlp_state
from ztfm_chain.fl.training import evaluate, train_local_many
from ztfm_chain.fl.trust import TrustPolicy, behaviour_bps, update_trust
from ztfm_chain.fl.validation import (
    RootLossScores,
    flag_root_loss,
    merge_flags,
    root_loss_changes,
)
from ztfm_chain.updates import ModelSchema

__all__ = [
    "ATTACKS",
    "AttackSettings",
    "Federation",
    "RuleSetup",
    "TrainingSettings",
    "Trajectory",
    "run_federation",
    "run_federations",
]

# What each attacker submits (strengths in AttackSettings):
# - none: nobody attacks.
# - sign-flip, sign-flip-x5: -1 or -5 times its honest update.
# - gaussian: N(0, noise_std^2) noise in place of its update.
# - scaling: scaling_factor times its honest update.
# - model-replacement: its update after training on flipped labels, multiplied by
#   n_devices / n_malicious.
# - label-flip: its update after training on flipped labels.
# - sybil: the sign-flipped update of the first attacker, the same from all.
# - inflated-count: its sign-flipped update with claimed_sample_count samples.
ATTACKS = (
    "none",
    "sign-flip",
    "sign-flip-x5",
    "gaussian",
    "scaling",
    "model-replacement",
    "label-flip",
    "sybil",
    "inflated-count",
)

_LABEL_ATTACKS = frozenset({"label-flip", "model-replacement"})


@dataclass(frozen=True)
class AttackSettings:
    """Strength of the simulated attacks.

    ``noise_std`` 0.05 per coordinate gives noise of norm about 4.9 for the 9,610
    parameters of the digits MLP. Honest first-round updates of a 20-device
    non-IID split had norms of 0.4 to 1.3.
    ``claimed_sample_count`` should equal the aggregator's ``max_sample_count``.
    """

    strong_sign_flip_scale: float = 5.0
    noise_std: float = 0.05
    scaling_factor: float = 10.0
    claimed_sample_count: int = 1000


@dataclass(frozen=True)
class TrainingSettings:
    """Local training hyperparameters, the same for devices and the root set."""

    epochs: int = 2
    batch_size: int = 16
    lr: float = 0.1


@dataclass(frozen=True)
class Federation:
    """Devices with their data partitions and the set of malicious devices."""

    split: DigitsSplit
    partitions: tuple[torch.Tensor, ...]
    malicious: frozenset[int]
    seed: int

    @classmethod
    def build(
        cls,
        split: DigitsSplit,
        *,
        n_devices: int,
        distribution: str,
        malicious_fraction: float,
        seed: int,
        alpha: float = 0.5,
    ) -> Federation:
        """Partition the pool and pick ``round(fraction * n_devices)`` attackers.

        ``distribution`` is ``"iid"`` or ``"dirichlet"`` (non-IID with ``alpha``).
        """
        if distribution == "iid":
            partitions = iid_split(split.pool_y, n_devices, seed=seed)
        elif distribution == "dirichlet":
            partitions = dirichlet_split(split.pool_y, n_devices, alpha, seed=seed)
        else:
            raise UsageError(
                f"unknown distribution {distribution!r}; expected 'iid' or 'dirichlet'"
            )
        if not 0 <= malicious_fraction < 1:
            raise UsageError(
                f"malicious_fraction must be in [0, 1), got {malicious_fraction}"
            )
        n_malicious = round(malicious_fraction * n_devices)
        rng = np.random.default_rng(seed)
        chosen = rng.choice(n_devices, size=n_malicious, replace=False)
        return cls(split, tuple(partitions), frozenset(int(i) for i in chosen), seed)

    @property
    def n_devices(self) -> int:
        """Number of devices, honest and malicious."""
        return len(self.partitions)

    @property
    def honest(self) -> tuple[int, ...]:
        """Indices of the honest devices, ascending."""
        return tuple(i for i in range(self.n_devices) if i not in self.malicious)


@dataclass(frozen=True)
class RuleSetup:
    """How the aggregator of one simulated run works.

    With ``root_reference``, the root-set update is the reference for anomaly scores
    and is passed to the rule, which FLTrust uses. Otherwise the coordinate-wise
    median of the participating updates is the reference for scores. ``honest_only``
    aggregates only honest devices (a baseline no real aggregator can run).
    ``filter_anomalies`` drops flagged updates before the rule runs.
    ``root_loss_check`` adds the root-set loss check of
    :mod:`ztfm_chain.fl.validation` to the flags; it needs ``root_reference``.
    """

    label: str
    rule: AggregationRule
    root_reference: bool = False
    honest_only: bool = False
    filter_anomalies: bool = False
    root_loss_check: bool = True


@dataclass
class Trajectory:
    """Outcome of a run: test accuracy and every device's trust after each round.

    ``diverged_round`` is the first round whose global model or updates contained
    NaN or infinity; later rounds repeat that round's values.
    """

    accuracy: list[float] = field(default_factory=list)
    trust: list[list[int]] = field(default_factory=list)
    diverged_round: int | None = None


def run_federation(
    federation: Federation,
    setup: RuleSetup,
    *,
    attack: str,
    rounds: int,
    training: TrainingSettings | None = None,
    attack_settings: AttackSettings | None = None,
    trust_policy: TrustPolicy | None = None,
) -> Trajectory:
    """Run ``rounds`` rounds from a seeded initial model and return the trajectory."""
    return run_federations(
        federation,
        [setup],
        attack=attack,
        rounds=rounds,
        training=training,
        attack_settings=attack_settings,
        trust_policy=trust_policy,
    )[0]


def run_federations(
    federation: Federation,
    setups: Sequence[RuleSetup],
    *,
    attack: str,
    rounds: int,
    training: TrainingSettings | None = None,
    attack_settings: AttackSettings | None = None,
    trust_policy: TrustPolicy | None = None,
) -> list[Trajectory]:
    """Run one federation per setup in lockstep and return their trajectories.

    Every run starts from the same seeded model, and in each round its devices use
    the same training seeds and attack noise as in the other runs, so the runs
    differ only by their aggregator. The local training of all runs in a round is
    one batched :func:`train_local_many` call.
    """
    if attack not in ATTACKS:
        raise UsageError(
            f"unknown attack {attack!r}; known attacks: {', '.join(ATTACKS)}"
        )
    if rounds < 1:
        raise UsageError(f"rounds must be at least 1, got {rounds}")
    if not setups:
        raise UsageError("run_federations needs at least one setup")
    training = training or TrainingSettings()
    context = _RoundContext(
        federation=federation,
        attack=attack,
        attack_settings=attack_settings or AttackSettings(),
        policy=trust_policy or TrustPolicy(),
        counts=torch.tensor([len(part) for part in federation.partitions]),
    )
    initial = init_mlp_state(DIGITS_WIDTHS, seed=federation.seed)
    runs = [
        _Run(setup, initial, [context.policy.initial_bps] * federation.n_devices)
        for setup in setups
    ]
    datasets = _round_datasets(federation, attack)
    for round_index in range(rounds):
        active = [run for run in runs if run.trajectory.diverged_round is None]
        if not active:
            break
        seeds = [
            _derive_seed(federation.seed, round_index, d) for d in range(len(datasets))
        ]
        results = train_local_many(
            [run.state for run in active for _ in datasets],
            list(datasets) * len(active),
            epochs=training.epochs,
            batch_size=training.batch_size,
            lr=training.lr,
            seeds=seeds * len(active),
        )
        for position, run in enumerate(active):
            chunk = results[position * len(datasets) : (position + 1) * len(datasets)]
            _advance(run, [result.delta for result in chunk], round_index, context)

    for run in runs:
        while len(run.trajectory.accuracy) < rounds:
            run.trajectory.accuracy.append(run.trajectory.accuracy[-1])
            run.trajectory.trust.append(list(run.trajectory.trust[-1]))
    return [run.trajectory for run in runs]


@dataclass(frozen=True)
class _RoundContext:
    federation: Federation
    attack: str
    attack_settings: AttackSettings
    policy: TrustPolicy
    counts: torch.Tensor


@dataclass
class _Run:
    setup: RuleSetup
    state: dict[str, torch.Tensor]
    trust: list[int]
    trajectory: Trajectory = field(default_factory=Trajectory)


def _advance(
    run: _Run,
    deltas: Sequence[dict[str, torch.Tensor]],
    round_index: int,
    context: _RoundContext,
) -> None:
    """Attack, score, aggregate and evaluate one round of one run."""
    federation = context.federation
    split = federation.split
    setup = run.setup
    n_devices = federation.n_devices
    schema = ModelSchema.from_state_dict(run.state)
    vectors = torch.stack([schema.flatten(delta) for delta in deltas])
    updates, root_update = vectors[:n_devices].clone(), vectors[n_devices]
    generator = torch.Generator().manual_seed(
        _derive_seed(federation.seed, round_index, -1)
    )
    updates, counts = _apply_attack(
        context.attack,
        updates,
        context.counts.clone(),
        sorted(federation.malicious),
        context.attack_settings,
        generator,
    )
    trajectory = run.trajectory
    if not bool(torch.isfinite(vectors).all()) or not bool(
        torch.isfinite(updates).all()
    ):
        # Training from this model overflowed, so the run cannot continue.
        trajectory.diverged_round = round_index
        trajectory.accuracy.append(evaluate(run.state, split.test_x, split.test_y))
        trajectory.trust.append(list(run.trust))
        return

    participants = (
        list(federation.honest) if setup.honest_only else list(range(n_devices))
    )
    mine = updates[participants]
    reference = (
        root_update
        if setup.root_reference
        else coordinate_median(mine.double())[0].to(mine.dtype)
    )
    root_loss = None
    if setup.root_reference and setup.root_loss_check:
        root_loss = root_loss_changes(
            schema,
            run.state,
            mine,
            split.root_x,
            split.root_y,
            reference=root_update,
        )
    flagged = _score_and_update_trust(
        mine, reference, participants, run.trust, context.policy, root_loss
    )
    chosen = [d for d in participants if not (setup.filter_anomalies and d in flagged)]
    if chosen:
        aggregate = setup.rule.aggregate(
            updates[chosen],
            counts[chosen].to(torch.float64),
            root_update if setup.root_reference else None,
        ).vector
        run.state = schema.unflatten(schema.flatten(run.state) + aggregate)
    trajectory.accuracy.append(evaluate(run.state, split.test_x, split.test_y))
    trajectory.trust.append(list(run.trust))
    if not all(bool(torch.isfinite(t).all()) for t in run.state.values()):
        trajectory.diverged_round = round_index


def _round_datasets(
    federation: Federation, attack: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    split = federation.split
    datasets = []
    for device, part in enumerate(federation.partitions):
        labels = split.pool_y[part]
        if attack in _LABEL_ATTACKS and device in federation.malicious:
            labels = flip_labels(labels, DIGITS_CLASSES)
        datasets.append((split.pool_x[part], labels))
    datasets.append((split.root_x, split.root_y))
    return datasets


def _apply_attack(
    attack: str,
    updates: torch.Tensor,
    counts: torch.Tensor,
    malicious: Sequence[int],
    settings: AttackSettings,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    if not malicious or attack in ("none", "label-flip"):
        return updates, counts
    rows = list(malicious)
    if attack == "sign-flip":
        updates[rows] = sign_flip(updates[rows])
    elif attack == "sign-flip-x5":
        updates[rows] = sign_flip(updates[rows], settings.strong_sign_flip_scale)
    elif attack == "gaussian":
        updates[rows] = gaussian_noise(
            updates[rows], std=settings.noise_std, generator=generator
        )
    elif attack == "scaling":
        updates[rows] = scale_update(updates[rows], settings.scaling_factor)
    elif attack == "model-replacement":
        boost = len(counts) / len(rows)
        updates[rows] = model_replacement(updates[rows], boost=boost)
    elif attack == "sybil":
        updates[rows] = sybil_copies(sign_flip(updates[rows[0]]), len(rows))
    elif attack == "inflated-count":
        updates[rows] = sign_flip(updates[rows])
        for row in rows:
            counts[row] = inflate_sample_count(
                int(counts[row]), claimed=settings.claimed_sample_count
            )
    return updates, counts


def _score_and_update_trust(
    updates: torch.Tensor,
    reference: torch.Tensor,
    participants: Sequence[int],
    trust: list[int],
    policy: TrustPolicy,
    root_loss: RootLossScores | None = None,
) -> set[int]:
    """Move the participants' trust by their behaviour; return the flagged devices."""
    if float(torch.linalg.vector_norm(reference)) == 0:
        # NOTE: a zero reference scores nothing, so trust stays unchanged this round.
        return set()
    scores = score_updates(updates, reference)
    flags = flag_anomalies(scores)
    if root_loss is not None:
        flags = tuple(
            merge_flags(flags, flag_root_loss(root_loss, scores.cosine)).values()
        )
    flagged = {participants[flag.index] for flag in flags}
    for position, device in enumerate(participants):
        behaviour = behaviour_bps(
            float(scores.cosine[position]), anomalous=device in flagged
        )
        trust[device] = update_trust(trust[device], behaviour, policy)
    return flagged


def _derive_seed(seed: int, round_index: int, device: int) -> int:
    return (seed * 1_000_003 + round_index * 10_007 + device + 1) % (2**63)
