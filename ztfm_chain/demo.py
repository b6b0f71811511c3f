"""The end-to-end demonstration behind ``ztfm demo``.

It starts a local Anvil and the embedded store, deploys the contracts, enrols 20
devices that train on scikit-learn's handwritten digits (split non-IID, Dirichlet 0.5
over labels), starts the aggregator as its own daemon process and runs the rounds.
Six parties misbehave, each in its own way:

- a device that flips the sign of its update and multiplies it by 5;
- a device that scales its update by 10;
- a device that, after round 1, replays its round-1 update into every later round;
- a device whose stored update is swapped on the storage node after it committed;
- a device that the registrar revokes in the middle of a round;
- an outsider that was never enrolled: it submits its own updates in odd rounds and
  forges a signature for an enrolled device in even rounds.

The devices are separate clients that share only the chain and the store with the
aggregator. After the rounds, the same data and training are replayed without the
chain for three baselines, labelled as such: plain FedAvg under attack, FedAvg over
the honest devices alone, and FedAvg with no adversaries.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ztfm_chain.aggregator.reasons import Reason
from ztfm_chain.chain.anvil import Anvil
from ztfm_chain.chain.client import ChainClient
from ztfm_chain.chain.deploy import RoleHolders, System, connect, deploy, save_manifest
from ztfm_chain.chain.events import iter_events
from ztfm_chain.chain.models import (
    AggregationRule,
    ModelParams,
    RoundState,
    create_model,
    model_info,
    round_info,
)
from ztfm_chain.cli.common import dev_account
from ztfm_chain.device.runtime import DeviceRuntime, DeviceStepError, TrainingSettings
from ztfm_chain.exceptions import ContractError, UsageError, ZtfmError
from ztfm_chain.fl.aggregation import FedAvg
from ztfm_chain.fl.data import DigitsSplit, dirichlet_split, load_digits_split
from ztfm_chain.fl.models import DIGITS_WIDTHS, init_mlp_state
from ztfm_chain.fl.simulation import Federation, RuleSetup, run_federations
from ztfm_chain.fl.simulation import TrainingSettings as SimTraining
from ztfm_chain.fl.training import evaluate
from ztfm_chain.identity import registrar
from ztfm_chain.identity.commitments import Commitment, sign_commitment, submit
from ztfm_chain.storage.embedded import EmbeddedStore
from ztfm_chain.updates import decode_model, encode_model

#: Misbehaviour of each misbehaving device, by device index.
ROLES = {
    1: "sign flip x5",
    5: "scaling x10",
    9: "replays an old update",
    13: "update swapped on storage",
    17: "revoked mid-run",
}
REVOKE_ROUND = 5
#: The misbehaving devices' indices go up to 17, so the demo needs 18 devices.
MIN_DEVICES = max(ROLES) + 1
#: Label of the on-chain run in the report, for each rule.
RULE_LABELS = {
    AggregationRule.FEDAVG: "FedAvg over the updates that pass the root-set checks",
    AggregationRule.TRIMMED_MEAN: "trimmed mean over the checked updates",
    AggregationRule.MEDIAN: "coordinate median over the checked updates",
    AggregationRule.MULTI_KRUM: "Multi-Krum over the checked updates",
    AggregationRule.FLTRUST: "FLTrust with the root-set reference",
}
# On-chain custom errors and the reason they correspond to.
_CONTRACT_REASONS = {
    "TrustTooLow": Reason.TRUST_TOO_LOW,
    "SignerMismatch": Reason.BAD_SIGNATURE,
    "CredentialExpired": Reason.CREDENTIAL_EXPIRED,
    "AlreadyCommitted": Reason.DUPLICATE,
}


@dataclass(frozen=True)
class DemoSettings:
    """Size and place of the demonstration."""

    workdir: Path
    report_dir: Path
    devices: int = 20
    rounds: int = 30
    seed: int = 0
    round_duration: int = 120
    rule: AggregationRule = AggregationRule.FEDAVG

    def __post_init__(self) -> None:
        if self.devices < MIN_DEVICES:
            raise UsageError(
                f"the demo needs at least {MIN_DEVICES} devices, because devices 1, "
                f"5, 9, 13 and 17 misbehave; got {self.devices}"
            )


@dataclass
class RoundRecord:
    """Outcome of one round as the demo prints and reports it."""

    round: int
    state: str
    accuracy: float
    accepted: int
    rejected: dict[str, str]
    trust: dict[str, int]


@dataclass
class DemoResult:
    """Everything the report shows."""

    rounds: list[RoundRecord] = field(default_factory=list)
    baselines: dict[str, list[float]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


Printer = Callable[[str], None]


def run_demo(settings: DemoSettings, say: Printer) -> DemoResult:
    """Run the demonstration and write its report; see the module docstring."""
    started = time.monotonic()
    # The fleet and the aggregator share the machine: one thread each for torch.
    torch.set_num_threads(1)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    split = load_digits_split(seed=settings.seed)
    partitions = dirichlet_split(
        split.pool_y, settings.devices, 0.5, seed=settings.seed + 1
    )
    result = DemoResult()
    with Anvil() as node:
        say(f"chain: embedded Anvil at {node.url} (chain id {node.chain_id})")
        store = EmbeddedStore(settings.workdir / "store")
        say(f"store: embedded block store at {store.root}")
        client = ChainClient(node.url)
        keys = [dev_account(i) for i in range(6)]
        system = connect(
            client,
            deploy(
                client,
                keys[0],
                RoleHolders(
                    registrar=keys[1].address,
                    attestor=keys[2].address,
                    model_manager=keys[3].address,
                    aggregators=(keys[4].address,),
                ),
            ),
        )
        save_manifest(system.deployment, settings.workdir)
        say(
            "keys: Anvil's public development accounts for the operators; "
            "fresh keys for the devices"
        )
        model_id = _create_model(system, store, keys[3], keys[4].address, settings)
        fleet = _enrol_fleet(system, store, split, partitions, keys, settings)
        result.labels = {d.device: ROLES.get(i, "honest") for i, d in enumerate(fleet)}
        daemon = _start_aggregator(node.url, store.root, model_id, settings)
        say(
            f"aggregator: daemon pid {daemon.pid}, log at "
            f"{settings.workdir / 'aggregator.log'}"
        )
        try:
            _run_rounds(
                system,
                store,
                model_id,
                fleet,
                keys,
                split,
                settings,
                result,
                say,
                daemon,
            )
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
    say("baselines: replaying the same devices' training without the chain")
    result.baselines = _baselines(split, partitions, settings)
    result.seconds = time.monotonic() - started
    write_report(result, settings)
    return result


def _create_model(
    system: System,
    store: EmbeddedStore,
    manager: LocalAccount,
    aggregator: str,
    settings: DemoSettings,
) -> int:
    base = encode_model(init_mlp_state(DIGITS_WIDTHS, seed=settings.seed))
    return create_model(
        system,
        manager,
        base_model_hash=hashlib.sha256(base).digest(),
        base_model_cid=store.put(base),
        params=ModelParams(
            min_trust=1000,
            quorum=settings.devices * 2 // 5,
            round_duration=settings.round_duration,
            max_update_bytes=100_000,
            max_sample_count=1000,
            aggregation_rule=settings.rule,
        ),
        segments=[1],
        aggregators=[aggregator],
    )


def _enrol_fleet(
    system: System,
    store: EmbeddedStore,
    split: DigitsSplit,
    partitions: list[torch.Tensor],
    keys: list[LocalAccount],
    settings: DemoSettings,
) -> list[DeviceRuntime]:
    fleet = []
    for index, indices in enumerate(partitions):
        secret = hashlib.sha256(f"ztfm demo {settings.seed} {index}".encode()).digest()
        key = Account.from_key(secret)
        registrar.enrol_device(system, keys[1], key, segment=1)
        registrar.attest_device(
            system,
            keys[2],
            key.address,
            measurement=hashlib.sha256(b"demo firmware 1.0").digest(),
            lifetime=7 * 86_400,
        )
        fleet.append(
            DeviceRuntime(
                system,
                store,
                key,
                split.pool_x[indices],
                split.pool_y[indices],
                relayer=keys[5],
                training=TrainingSettings(epochs=2, batch_size=16, lr=0.1),
                seed=settings.seed * 1000 + index,
            )
        )
    return fleet


def _start_aggregator(
    url: str, store_root: Path, model_id: int, settings: DemoSettings
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "ztfm_chain.cli.main",
        "--home",
        str(settings.workdir),
        "--rpc-url",
        url,
        "--store",
        str(store_root),
        "aggregator",
        "run",
        "--key",
        "dev:4",
        "--model",
        str(model_id),
        "--close-when-all-committed",
        "--open-rounds",
        "--max-rounds",
        str(settings.rounds),
        "--root-digits",
        "--root-loss",
        "--exit-when-done",
        "--poll-interval",
        "0.1",
        "--content-grace",
        "0",
        # Near convergence, honest non-IID updates are small and their cosines to the
        # root-set update scatter around 0; sign-flipped ones stay far below -0.1.
        "--min-cosine",
        "-0.1",
        "--log-format",
        "json",
    ]
    log_file = (settings.workdir / "aggregator.log").open("wb")
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
    )


def _run_rounds(
    system: System,
    store: EmbeddedStore,
    model_id: int,
    fleet: list[DeviceRuntime],
    keys: list[LocalAccount],
    split: DigitsSplit,
    settings: DemoSettings,
    result: DemoResult,
    say: Printer,
    daemon: subprocess.Popen[bytes],
) -> None:
    outsider = Account.from_key(hashlib.sha256(b"ztfm demo outsider").digest())
    first_updates: dict[int, tuple[str, bytes, bytes, int]] = {}
    schema = None
    for round in range(1, settings.rounds + 1):
        _wait_for(
            functools.partial(_round_open, system, model_id, round),
            f"round {round} to open",
        )
        on_chain_rejections: dict[str, str] = {}

        def act(index: int, round: int = round) -> tuple[int, str | None]:
            try:
                _act(index, fleet[index], round, model_id, system, store, first_updates)
            except DeviceStepError as exc:
                return index, _reason_of(exc)
            return index, None

        # The device to be revoked goes first, so that it is revoked mid-round,
        # after its commitment and before the round closes.
        outcomes = [act(17)]
        if round == REVOKE_ROUND:
            system.client.transact(
                system.devices.functions.revoke(fleet[17].device), keys[1]
            )
        others = [i for i in range(len(fleet)) if i != 17]
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes += list(pool.map(act, others))
        for index, reason in outcomes:
            if reason is not None:
                on_chain_rejections[fleet[index].device] = reason
        outsider_reason = _outsider_attempt(system, outsider, fleet[0], model_id, round)
        on_chain_rejections[outsider.address] = outsider_reason
        _wait_for(
            functools.partial(_round_ended, system, model_id, round),
            f"round {round} to be finalized",
            timeout=settings.round_duration + 120,
        )
        info = round_info(system, model_id, round)
        report = _report(system, store, model_id, round)
        model = model_info(system, model_id)
        data = store.get(model.global_model_cid)
        if schema is None:
            from ztfm_chain.globalmodel import schema_of

            schema = schema_of(data)
        state = decode_model(data, schema, max_size=len(data))
        accuracy = evaluate(state, split.test_x, split.test_y)
        rejected = {
            row["device"]: row["reason"]
            for row in report.get("commitments", [])
            if row["reason"] != "ACCEPTED"
        }
        rejected.update(on_chain_rejections)
        # The aggregator writes trust scores after finalizing, then opens the next
        # round (or exits after the last one): wait for that before reading them.
        if round < settings.rounds:
            _wait_for(
                functools.partial(_round_open, system, model_id, round + 1),
                f"round {round + 1} to open",
            )
        else:
            _wait_for(lambda: daemon.poll() is not None, "the aggregator to finish")
        scores = system.trust.functions.scoresOf([d.device for d in fleet]).call()
        record = RoundRecord(
            round=round,
            state=info.state.name.lower(),
            accuracy=accuracy,
            accepted=len(report.get("accepted", [])),
            rejected=rejected,
            trust={d.device: int(s) for d, s in zip(fleet, scores, strict=True)},
        )
        result.rounds.append(record)
        say(_round_line(record, fleet, outsider.address))


def _act(
    index: int,
    device: DeviceRuntime,
    round: int,
    model_id: int,
    system: System,
    store: EmbeddedStore,
    first_updates: dict[int, tuple[str, bytes, bytes, int]],
) -> None:
    if index == 1:
        device.run_round(
            model_id, transform=lambda d: {k: -5 * v for k, v in d.items()}
        )
    elif index == 5:
        device.run_round(
            model_id, transform=lambda d: {k: 10 * v for k, v in d.items()}
        )
    elif index == 9 and round > 1:
        cid, content_hash, base_hash, count = first_updates[index]
        commitment = Commitment(
            model_id=model_id,
            round=round,
            device=device.device,
            content_hash=content_hash,
            cid=cid,
            sample_count=count,
            base_model_hash=base_hash,
        )
        assert device.relayer is not None
        signature = sign_commitment(system, device.key, commitment)
        try:
            submit(system, device.relayer, commitment, signature)
        except ZtfmError as exc:
            raise DeviceStepError("submit commitment", str(exc)) from exc
    elif index == 13:
        sent = device.run_round(model_id)
        # A storage node that lies: other bytes under the committed CID.
        path = store.object_path(sent.cid)
        forged = bytearray(path.read_bytes())
        forged[-8:] = b"\x7f" * 8
        path.write_bytes(bytes(forged))
    else:
        sent = device.run_round(model_id)
        if index == 9:
            base = round_info(system, model_id, round).base_model_hash
            first_updates[index] = (
                sent.cid,
                sent.content_hash,
                base,
                sent.sample_count,
            )


def _outsider_attempt(
    system: System,
    outsider: LocalAccount,
    victim: DeviceRuntime,
    model_id: int,
    round: int,
) -> str:
    """Submit the outsider's commitment: its own in odd rounds, forged for ``victim`` in even ones."""
    base = round_info(system, model_id, round).base_model_hash
    claimed = outsider.address if round % 2 else victim.device
    commitment = Commitment(
        model_id=model_id,
        round=round,
        device=claimed,
        content_hash=hashlib.sha256(f"outsider {round}".encode()).digest(),
        cid="bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4",
        sample_count=100,
        base_model_hash=base,
    )
    signature = sign_commitment(system, outsider, commitment)
    assert victim.relayer is not None
    try:
        submit(system, victim.relayer, commitment, signature)
    except ContractError as exc:
        if exc.error_name == "DeviceNotActive":
            return Reason.UNREGISTERED_DEVICE.name
        return _CONTRACT_REASONS.get(exc.error_name, Reason.BAD_SIGNATURE).name
    return "ACCEPTED"


def _reason_of(error: DeviceStepError) -> str:
    cause = error.__cause__
    if isinstance(cause, ContractError):
        if cause.error_name == "DeviceNotActive":
            status = int(str(cause.arguments.get("status", 0)))
            return {
                0: "UNREGISTERED_DEVICE",
                2: "DEVICE_SUSPENDED",
                3: "DEVICE_REVOKED",
            }.get(status, "DEVICE_REVOKED")
        reason = _CONTRACT_REASONS.get(cause.error_name)
        if reason is not None:
            return reason.name
        return cause.error_name
    return f"{error.step}: {error}"


def _round_open(system: System, model_id: int, round: int) -> bool:
    model = model_info(system, model_id)
    if model.current_round != round:
        return False
    return round_info(system, model_id, round).state is RoundState.OPEN


def _round_ended(system: System, model_id: int, round: int) -> bool:
    state = round_info(system, model_id, round).state
    return state in (RoundState.FINALIZED, RoundState.FAILED)


def _wait_for(check: Callable[[], bool], what: str, *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise ZtfmError(
        f"timed out after {timeout:.0f}s waiting for {what}; see aggregator.log"
    )


def _report(system: System, store: EmbeddedStore, model_id: int, round: int) -> Any:
    head = system.client.w3.eth.block_number
    for event in (
        system.models.events.RoundFinalized,
        system.models.events.RoundFailed,
    ):
        found = list(
            iter_events(
                system.client,
                event,
                system.deployment.deployed_at_block,
                head,
                argument_filters={"modelId": model_id, "round": round},
            )
        )
        if found:
            return json.loads(store.get(found[-1]["args"]["reportCid"]))
    return {}


def _round_line(record: RoundRecord, fleet: list[DeviceRuntime], outsider: str) -> str:
    names: dict[str, str] = {d.device: f"dev{i:02d}" for i, d in enumerate(fleet)}
    names[outsider] = "outsider"
    rejected = ", ".join(
        f"{names.get(d, d[:10])} {reason}"
        for d, reason in sorted(record.rejected.items())
    )
    suspicious = [1, 5, 9, 13, 17]
    trust = " ".join(f"dev{i:02d}={record.trust[fleet[i].device]}" for i in suspicious)
    honest = [
        record.trust[d.device] for i, d in enumerate(fleet) if i not in suspicious
    ]
    return (
        f"round {record.round:2d} {record.state:9s} accuracy {record.accuracy:.3f} "
        f"accepted {record.accepted:2d} | rejected: {rejected or 'none'} | trust "
        f"{trust} honest median={sorted(honest)[len(honest) // 2]}"
    )


def _baselines(
    split: DigitsSplit, partitions: list[torch.Tensor], settings: DemoSettings
) -> dict[str, list[float]]:
    training = SimTraining(epochs=2, batch_size=16, lr=0.1)
    attacked = Federation(
        split,
        tuple(partitions),
        frozenset(i for i in ROLES if i != 17),
        settings.seed,
    )
    under_attack, honest_only = run_federations(
        attacked,
        [
            RuleSetup("FedAvg under attack", FedAvg()),
            RuleSetup("FedAvg, honest devices only", FedAvg(), honest_only=True),
        ],
        attack="sign-flip-x5",
        rounds=settings.rounds,
        training=training,
    )
    clean = Federation(split, tuple(partitions), frozenset(), settings.seed)
    (no_attack,) = run_federations(
        clean,
        [RuleSetup("FedAvg, no adversaries", FedAvg())],
        attack="none",
        rounds=settings.rounds,
        training=training,
    )
    return {
        # The off-chain replay cannot swap stored bytes or replay commitments, so
        # the four devices whose updates are bad on chain all send 5x sign flips.
        "FedAvg under attack (off-chain replay: devices 1, 5, 9 and 13 send "
        "5x sign-flipped updates)": under_attack.accuracy,
        "FedAvg over the honest devices only (off-chain replay)": honest_only.accuracy,
        "FedAvg with no adversaries (off-chain replay)": no_attack.accuracy,
    }


def write_report(result: DemoResult, settings: DemoSettings) -> Path:
    """Write report.md, accuracy.png and trust.png into the report folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = settings.report_dir
    folder.mkdir(parents=True, exist_ok=True)
    rounds = [r.round for r in result.rounds]
    figure, axes = plt.subplots(figsize=(8, 5))
    axes.plot(
        rounds,
        [r.accuracy for r in result.rounds],
        label=f"on chain: {RULE_LABELS[settings.rule]}",
    )
    for label, series in result.baselines.items():
        axes.plot(rounds, series[: len(rounds)], label=label, linestyle="--")
    axes.set_xlabel("round")
    axes.set_ylabel("test accuracy (360 held-out digits)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(folder / "accuracy.png", dpi=110)
    plt.close(figure)
    figure, axes = plt.subplots(figsize=(8, 5))
    styles = iter(["-", "--", "-.", (0, (5, 1)), (0, (1, 1)), (0, (3, 1, 1, 1))])
    for index, (device, label) in enumerate(result.labels.items()):
        series = [r.trust[device] for r in result.rounds]
        if label == "honest":
            axes.plot(rounds, series, ":", alpha=0.4, color="grey")
        else:
            # Distinct dashes: several attackers end on the same score.
            axes.plot(
                rounds,
                series,
                linestyle=next(styles),
                linewidth=2,
                label=f"dev{index:02d} {label}",
            )
    axes.set_xlabel("round")
    axes.set_ylabel("trust score on chain (basis points)")
    axes.legend(fontsize=8, title="grey dotted: honest devices", loc="center right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(folder / "trust.png", dpi=110)
    plt.close(figure)
    (folder / "report.md").write_text(_markdown(result, settings), encoding="utf-8")
    (folder / "rounds.json").write_text(
        json.dumps([r.__dict__ for r in result.rounds], indent=2), encoding="utf-8"
    )
    return folder


def _markdown(result: DemoResult, settings: DemoSettings) -> str:
    final = result.rounds[-1].accuracy if result.rounds else float("nan")
    lines = [
        "# ztfm demo report",
        "",
        f"{settings.devices} devices, {settings.rounds} rounds, seed {settings.seed}, "
        f"digits split non-IID (Dirichlet 0.5); run took {result.seconds:.0f} s.",
        "",
        "| run | final accuracy |",
        "| --- | ---: |",
        f"| on chain: {RULE_LABELS[settings.rule]} | {final:.3f} |",
    ]
    for label, series in result.baselines.items():
        lines.append(f"| {label} | {series[-1]:.3f} |")
    lines += [
        "",
        "![accuracy](accuracy.png) ![trust](trust.png)",
        "",
        "| round | state | accuracy | accepted | rejected (reason) |",
        "| ---: | --- | ---: | ---: | --- |",
    ]
    names = {
        d: f"dev{i:02d} {label}" for i, (d, label) in enumerate(result.labels.items())
    }
    for record in result.rounds:
        rejected = "; ".join(
            f"{names.get(d, 'outsider ' + d[:8])}: {reason}"
            for d, reason in sorted(record.rejected.items())
        )
        lines.append(
            f"| {record.round} | {record.state} | {record.accuracy:.3f} | "
            f"{record.accepted} | {rejected} |"
        )
    lines += [
        "",
        "| name | device | role | final trust |",
        "| --- | --- | --- | ---: |",
    ]
    last = result.rounds[-1].trust if result.rounds else {}
    for index, (device, label) in enumerate(result.labels.items()):
        lines.append(
            f"| dev{index:02d} | {device} | {label} | {last.get(device, '')} |"
        )
    lines += [
        "",
        "A device whose trust falls below the model's minimum is refused by the "
        "contract and so earns no new score: it stays out until an operator acts.",
    ]
    return "\n".join(lines) + "\n"
