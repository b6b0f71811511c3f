"""Time full aggregator rounds on a local Anvil, phase by phase, against plain FedAvg.

Usage: .venv/bin/python scripts/bench_rounds.py [--quick] [--devices 10,50]
       [--parameters 10000,100000] [--out FILE]

For each model size (``mlp_for_parameter_count``) and device count, the script creates
a FedAvg model, opens round 1 and has every device commit an update through a
relayer, with a real EIP-712 signature. Updates are not trained: each one is a shared
random direction plus per-device noise, so all of them pass the anomaly checks. They
are encoded with ``encode_update`` and stored in an ``EmbeddedStore``.

An unmodified :class:`Aggregator` then runs the round with ``close_after`` set to
the device count: it syncs events, checks provenance, closes the round, fetches,
decodes and checks every update, aggregates, publishes, finalizes and writes trust
scores. The daemon's steps are wrapped from outside to time each phase, exclusive of
the phases nested inside it.

The baseline is a plain FedAvg over the same updates, run in the same process once
before and twice after the daemon round. It reads the stored bytes without CID or
hash checks, loads them with ``safetensors``, averages them weighted by sample count
and encodes the new model, which must have the same SHA-256 as the daemon's.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import hashlib
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ztfm_chain.aggregator import daemon, verify
from ztfm_chain.aggregator.daemon import Aggregator, AggregatorSettings
from ztfm_chain.aggregator.journal import Journal
from ztfm_chain.aggregator.rounds import UpdateStack
from ztfm_chain.chain.anvil import Anvil
from ztfm_chain.chain.client import ChainClient
from ztfm_chain.chain.deploy import RoleHolders, System, connect, deploy
from ztfm_chain.chain.models import (
    AggregationRule,
    ModelParams,
    create_model,
    open_round,
)
from ztfm_chain.cli.common import dev_account
from ztfm_chain.fl.aggregation import FedAvg
from ztfm_chain.fl.models import init_mlp_state, mlp_for_parameter_count
from ztfm_chain.identity import registrar
from ztfm_chain.identity.commitments import Commitment, sign_commitment, submit
from ztfm_chain.storage.embedded import EmbeddedStore
from ztfm_chain.updates import ModelSchema, UpdateMeta, encode_model, encode_update

MEASUREMENT = hashlib.sha256(b"firmware").digest()
FULL_DEVICES = (10, 50, 100, 200)
FULL_PARAMETERS = (10_000, 100_000, 1_000_000)
QUICK_DEVICES = (10, 50)
QUICK_PARAMETERS = (10_000, 100_000)
# Targets: a round at most 25% slower than plain FedAvg, and a round of 100 devices
# with a 100,000-parameter model within 30 s.
TARGET_OVERHEAD = 0.25
TARGET_CASE = (100, 100_000)
TARGET_SECONDS = 30.0
# Phases in table order. "other" is the round's wall time outside all the others.
PHASES = (
    "events",
    "provenance",
    "signatures",
    "status re-check",
    "base model",
    "fetch",
    "hash and checks",
    "decode",
    "aggregate",
    "trust reads",
    "publish",
    "chain writes",
    "other",
)
# Commitments between two event syncs of the daemon while devices commit.
FOLLOW_EVERY = 10
# Phases that verify provenance and content, which plain FedAvg skips.
VERIFICATION_PHASES = (
    "provenance",
    "signatures",
    "status re-check",
    "hash and checks",
)
# Phases that are JSON-RPC traffic with the chain, for the off-chain overhead.
CHAIN_PHASES = (
    "events",
    "provenance",
    "status re-check",
    "trust reads",
    "chain writes",
)


class PhaseTimer:
    """Exclusive wall time per phase of wrapped functions, while active.

    A wrapped call's time counts for its phase minus the time of wrapped calls
    nested inside it, so the phases of one round add up to its wall time. A phase
    patched with ``absorb=True`` keeps the time of the calls nested inside it.
    """

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self.active = False
        self._children: list[float] = []
        self._absorbing = 0

    def patch(self, owner: Any, name: str, phase: str, *, absorb: bool = False) -> None:
        """Replace ``owner.name`` with a timed wrapper that counts for ``phase``."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active or self._absorbing:
                return original(*args, **kwargs)
            self._children.append(0.0)
            self._absorbing += absorb
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self._absorbing -= absorb
                nested = self._children.pop()
                self.totals[phase] += elapsed - nested
                if self._children:
                    self._children[-1] += elapsed

        setattr(owner, name, timed)


def install_timer() -> PhaseTimer:
    """Wrap the daemon's steps in this process to time them by phase."""
    timer = PhaseTimer()
    timer.patch(Aggregator, "sync_events", "events")
    timer.patch(daemon, "check_provenance_many", "provenance")
    timer.patch(verify, "_check_signature", "signatures")
    timer.patch(daemon, "check_current_status_many", "status re-check")
    timer.patch(Aggregator, "_round_base", "base model", absorb=True)
    # The store's get recomputes the CID, a SHA-256 over the bytes, before it returns.
    timer.patch(EmbeddedStore, "get", "fetch")
    timer.patch(daemon, "check_content", "hash and checks")
    timer.patch(verify, "decode_update", "decode")
    timer.patch(UpdateStack, "add", "decode")
    timer.patch(daemon, "compute_outcome", "aggregate")
    timer.patch(daemon, "root_reference", "aggregate")
    timer.patch(daemon, "next_trust", "aggregate")
    timer.patch(Aggregator, "_current_trust", "trust reads")
    timer.patch(Aggregator, "_publish", "publish")
    timer.patch(daemon, "close_round", "chain writes")
    timer.patch(Aggregator, "_finalize", "chain writes")
    timer.patch(Aggregator, "_write_trust", "chain writes")
    return timer


@dataclass
class CaseResult:
    """Timings of one (devices, parameters) case, in seconds."""

    devices: int
    parameters: int
    update_bytes: int
    setup: float
    round: float
    steps: int
    phases: dict[str, float]
    collection: dict[str, float]
    plain: float
    plain_math: float
    round_baseline_mib: float
    round_peak_mib: float
    plain_peak_mib: float

    @property
    def overhead(self) -> float:
        """Extra wall time of the daemon round over plain FedAvg, as a fraction."""
        return (self.round - self.plain) / self.plain

    @property
    def collected(self) -> float:
        """Wall time of the event syncs while devices committed."""
        return sum(self.collection.values())

    @property
    def verification(self) -> float:
        """Wall time of the verification phases, in the round and while collecting."""
        return sum(self.phases[p] + self.collection[p] for p in VERIFICATION_PHASES)

    @property
    def verification_overhead(self) -> float:
        """Verification wall time as a fraction of plain FedAvg."""
        return self.verification / self.plain

    @property
    def off_chain(self) -> float:
        """Round wall time outside the phases that talk to the chain."""
        return self.round - sum(self.phases[p] for p in CHAIN_PHASES)

    @property
    def off_chain_overhead(self) -> float:
        """Extra off-chain wall time over plain FedAvg, as a fraction."""
        return (self.off_chain - self.plain) / self.plain


@dataclass(frozen=True)
class Bench:
    """The chain, the accounts and the enrolled devices shared by all cases."""

    system: System
    manager: LocalAccount
    aggregator: LocalAccount
    relayer: LocalAccount
    devices: list[LocalAccount]
    workdir: Path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device_counts = _sizes(args.devices, QUICK_DEVICES if args.quick else FULL_DEVICES)
    parameter_counts = _sizes(
        args.parameters, QUICK_PARAMETERS if args.quick else FULL_PARAMETERS
    )

    started = time.perf_counter()
    resettable = reset_peak_rss()
    timer = install_timer()
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-rounds-") as workdir,
        Anvil() as node,
    ):
        bench = setup(node, max(device_counts), Path(workdir))
        progress("warm-up round, not reported")
        run_case(bench, timer, min(device_counts), min(parameter_counts))
        for parameters in parameter_counts:
            for devices in device_counts:
                progress(f"round with {devices} devices, {parameters:,} parameters")
                results.append(run_case(bench, timer, devices, parameters))

    text = render(results, time.perf_counter() - started, resettable)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="10 and 50 devices with 10,000 and 100,000 parameters",
    )
    parser.add_argument(
        "--devices", help="comma-separated device counts (default: 10,50,100,200)"
    )
    parser.add_argument(
        "--parameters",
        help="comma-separated model sizes, in parameters "
        "(default: 10000,100000,1000000)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1, because two threads on a loaded "
        "2-core machine made tensor operations slower and erratic)",
    )
    parser.add_argument("--out", help="also write the Markdown report to this file")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return args


def setup(node: Anvil, device_count: int, workdir: Path) -> Bench:
    """Deploy the contracts and enrol and attest ``device_count`` devices."""
    client = ChainClient(node.url)
    admin, registrar_key, attestor, manager, aggregator, relayer = [
        dev_account(i) for i in range(6)
    ]
    system = connect(
        client,
        deploy(
            client,
            admin,
            RoleHolders(
                registrar=registrar_key.address,
                attestor=attestor.address,
                model_manager=manager.address,
                aggregators=(aggregator.address,),
            ),
        ),
    )
    progress(f"enrolling {device_count} devices")
    devices = []
    for index in range(device_count):
        key: LocalAccount = Account.from_key(
            hashlib.sha256(f"bench-rounds-{index}".encode()).digest()
        )
        registrar.enrol_device(system, registrar_key, key)
        registrar.attest_device(system, attestor, key.address, measurement=MEASUREMENT)
        devices.append(key)
    return Bench(system, manager, aggregator, relayer, devices, workdir)


def run_case(
    bench: Bench, timer: PhaseTimer, device_count: int, parameters: int
) -> CaseResult:
    system = bench.system
    case_dir = bench.workdir / f"{device_count}-{parameters}"
    store = EmbeddedStore(case_dir / "store")
    widths = mlp_for_parameter_count(parameters).widths
    base = init_mlp_state(widths, seed=0)
    schema = ModelSchema.from_state_dict(base)
    base_bytes = encode_model(base)
    base_hash = hashlib.sha256(base_bytes).digest()
    setup_start = time.perf_counter()
    model_id = create_model(
        system,
        bench.manager,
        base_model_hash=base_hash,
        base_model_cid=store.put(base_bytes),
        params=ModelParams(
            min_trust=2_000,
            quorum=1,
            round_duration=36_000,
            max_update_bytes=schema.numel * 4 + 65_536,
            max_sample_count=10_000,
            aggregation_rule=AggregationRule.FEDAVG,
        ),
        segments=[1],
        aggregators=[bench.aggregator.address],
    )
    round_ = open_round(system, bench.manager, model_id)
    opened_at = system.client.w3.eth.block_number
    journal = Journal(case_dir / "journal.sqlite")
    aggregator = Aggregator(
        system,
        store,
        bench.aggregator,
        journal,
        AggregatorSettings(
            models=(model_id,), close_after=device_count, content_grace=0.0
        ),
    )
    # Start the event sync at this round instead of at the deployment block.
    with journal.transaction() as db:
        journal.set_cursor(db, opened_at)

    # A running daemon polls the chain while devices commit, so it checks each
    # commitment's provenance a few blocks after it was mined.
    timer.totals.clear()

    def follow_chain(index: int) -> None:
        if (index + 1) % FOLLOW_EVERY == 0:
            timer.active = True
            aggregator.sync_events()
            timer.active = False

    stored = commit_updates(
        bench, store, schema, model_id, round_, base_hash, device_count, follow_chain
    )
    collection = {phase: timer.totals.get(phase, 0.0) for phase in PHASES}
    setup_seconds = time.perf_counter() - setup_start - sum(collection.values())

    plain_peaks = []
    reset_peak_rss()
    plain_runs = [plain_fedavg(store, schema, base, stored)]
    plain_peaks.append(peak_rss_mib())
    timer.totals.clear()
    reset_peak_rss()
    round_baseline = current_rss_mib()
    timer.active = True
    start = time.perf_counter()
    steps = 0
    while journal.phase(model_id, round_) != "done":
        if steps == 5:
            raise RuntimeError(
                f"round {round_} of model {model_id} not done after {steps} steps"
            )
        aggregator.step()
        steps += 1
    round_seconds = time.perf_counter() - start
    timer.active = False
    round_peak = peak_rss_mib()
    for _ in range(2):
        reset_peak_rss()
        plain_runs.append(plain_fedavg(store, schema, base, stored))
        plain_peaks.append(peak_rss_mib())

    result = journal.result(model_id, round_)
    assert result is not None, "a done round always has a result"
    if result["accepted_count"] != device_count:
        raise RuntimeError(
            f"the daemon accepted {result['accepted_count']} of {device_count} "
            "updates, but every update is built to pass"
        )
    plain_hash = "0x" + hashlib.sha256(plain_runs[0][0]).hexdigest()
    if plain_hash != result["new_model_hash"]:
        raise RuntimeError(
            f"plain FedAvg gives model {plain_hash}, the daemon "
            f"{result['new_model_hash']}"
        )
    journal.close()
    phases = {phase: timer.totals.get(phase, 0.0) for phase in PHASES}
    phases["other"] = round_seconds - sum(phases.values())
    update_bytes = os.path.getsize(store.object_path(stored[0][0]))
    shutil.rmtree(case_dir)
    gc.collect()
    return CaseResult(
        devices=device_count,
        parameters=schema.numel,
        update_bytes=update_bytes,
        setup=setup_seconds,
        round=round_seconds,
        steps=steps,
        phases=phases,
        collection=collection,
        plain=statistics.median(run[1] for run in plain_runs),
        plain_math=statistics.median(run[2] for run in plain_runs),
        round_baseline_mib=round_baseline,
        round_peak_mib=round_peak,
        plain_peak_mib=max(plain_peaks),
    )


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS to its current RSS, or return False if refused.

    Writing 5 to /proc/self/clear_refs resets the peak that ``getrusage`` reports.
    glibc keeps freed heap memory mapped, so ``malloc_trim`` first returns it to the
    kernel. Otherwise memory freed by the previous run would count in the next peak.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def current_rss_mib() -> float:
    """Return the process's current RSS in MiB, from /proc/self/statm."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """Return ``ru_maxrss`` of ``resource.getrusage`` in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def commit_updates(
    bench: Bench,
    store: EmbeddedStore,
    schema: ModelSchema,
    model_id: int,
    round_: int,
    base_hash: bytes,
    device_count: int,
    after_commit: Callable[[int], None],
) -> list[tuple[str, int]]:
    """Store and commit one update per device, and return (CID, sample count) pairs.

    ``after_commit`` is called with each device's index after its commitment.
    """
    generator = torch.Generator().manual_seed(model_id)
    shared = torch.randn(schema.numel, generator=generator) * 0.01
    stored = []
    for index, key in enumerate(bench.devices[:device_count]):
        noise = torch.randn(schema.numel, generator=generator) * 0.01
        tensors = schema.unflatten(shared + noise)
        sample_count = 50 + (index * 37) % 450
        meta = UpdateMeta(
            model_id, round_, "0x" + base_hash.hex(), sample_count, "delta"
        )
        payload = encode_update(tensors, meta)
        cid = store.put(payload)
        commitment = Commitment(
            model_id=model_id,
            round=round_,
            device=key.address,
            content_hash=hashlib.sha256(payload).digest(),
            cid=cid,
            sample_count=sample_count,
            base_model_hash=base_hash,
        )
        signature = sign_commitment(bench.system, key, commitment)
        submit(bench.system, bench.relayer, commitment, signature)
        stored.append((cid, sample_count))
        after_commit(index)
    return stored


def plain_fedavg(
    store: EmbeddedStore,
    schema: ModelSchema,
    base: dict[str, torch.Tensor],
    stored: list[tuple[str, int]],
) -> tuple[bytes, float, float]:
    """Average the stored updates with no checks, and return (model, seconds, math).

    ``math`` is the FedAvg arithmetic alone: stacking, weighting, averaging.
    """
    start = time.perf_counter()
    payloads = [store.object_path(cid).read_bytes() for cid, _ in stored]
    updates = [safetensors.torch.load(payload) for payload in payloads]
    del payloads
    math_start = time.perf_counter()
    matrix = torch.stack([schema.flatten(update) for update in updates])
    weights = torch.tensor([float(count) for _, count in stored], dtype=torch.float64)
    del updates
    vector = FedAvg().aggregate(matrix.to(torch.float64), weights).vector
    math_seconds = time.perf_counter() - math_start
    delta = schema.unflatten(vector.to(torch.float32))
    model = encode_model({name: base[name] + delta[name] for name in schema})
    return model, time.perf_counter() - start, math_seconds


def render(results: list[CaseResult], elapsed: float, resettable: bool) -> str:
    command = " ".join([".venv/bin/python scripts/bench_rounds.py", *sys.argv[1:]])
    lines = [
        "# Aggregator round benchmark",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} with `{command}` on "
        f"{os.cpu_count()} cores ({cpu_model()}), Python "
        f"{platform.python_version()}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op thread(s), Anvil on 127.0.0.1, embedded "
        f"store in a temporary directory. A warm-up round of the smallest case runs "
        f"first and is not reported. The run took {elapsed:.0f} s.",
        "",
        "## Round time against plain FedAvg",
        "",
        "Round: wall time of `Aggregator.step()` calls until the round's journal "
        "phase is `done`. Plain FedAvg: median of 3 runs in the same process, one "
        "before and two after the round. FedAvg maths is its stacking and weighted "
        "averaging alone. Overhead is (round - plain FedAvg) / plain FedAvg. The "
        "off-chain part of the round leaves out the phases that send JSON-RPC "
        "requests (" + ", ".join(CHAIN_PHASES) + "), and off-chain overhead compares "
        "it with plain FedAvg the same way. As a running daemon does, the "
        f"benchmark syncs the daemon's events after every {FOLLOW_EVERY} "
        "commitments while devices commit; those syncs are the collection column "
        "and are not part of the round or of setup. Verification is the time of "
        "the phases that check provenance and content ("
        + ", ".join(VERIFICATION_PHASES)
        + "), during collection and in the round, and verification overhead is "
        "that time / plain FedAvg. "
        "Peak RSS is `ru_maxrss` of "
        "`resource.getrusage`, reset through /proc/self/clear_refs, after glibc's "
        "`malloc_trim`, before the round and before each plain run"
        + (
            "."
            if resettable
            else ", but this kernel refused the reset, so each peak is the process "
            "maximum so far."
        ),
        "",
        "| devices | parameters | update, KiB | setup, s | collection, s "
        "| round, s | plain FedAvg, s "
        "| FedAvg maths, s | overhead | off-chain part of round, s "
        "| off-chain overhead | verification, s | verification overhead "
        "| round peak RSS, MiB | plain FedAvg peak RSS, MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.devices} | {r.parameters:,} | {r.update_bytes / 1024:,.0f} "
            f"| {r.setup:.1f} | {r.collected:.2f} | {r.round:.2f} | {r.plain:.3f} | {r.plain_math:.3f} "
            f"| {r.overhead:.0%} | {r.off_chain:.2f} | {r.off_chain_overhead:.0%} "
            f"| {r.verification:.2f} | {r.verification_overhead:.0%} "
            f"| {r.round_peak_mib:,.0f} | {r.plain_peak_mib:,.0f} |"
        )
    lines += [
        "",
        "Setup is creating the model, opening the round, and building, storing, "
        "signing and committing every update. It is not part of the round.",
        "",
        "## Round phases, seconds",
        "",
        "Exclusive wall time of each wrapped daemon step in the round, without "
        "the syncs during collection. Events: reading "
        "`UpdateCommitted` logs and journaling them. Provenance: the batched "
        "JSON-RPC reads of `check_provenance_many`, without the signature "
        "recovery. Status re-check: the batched reads of "
        "`check_current_status_many`. Decode: `decode_update` and copying each "
        "update into its row of the round's `UpdateStack`. Fetch: "
        "`EmbeddedStore.get`, which checks the CID. Hash and checks: the content "
        "SHA-256 and metadata checks of `check_content`. Base model: fetching and "
        "checking the round's global model. Chain writes: `closeRound`, "
        "`finalizeRound`, `setScores` and the state reads around them.",
        "",
        "| devices | parameters | " + " | ".join(PHASES) + " |",
        "| ---: | ---: | " + " | ".join("---:" for _ in PHASES) + " |",
    ]
    for r in results:
        cells = " | ".join(f"{r.phases[p]:.2f}" for p in PHASES)
        lines.append(f"| {r.devices} | {r.parameters:,} | {cells} |")
    lines += ["", "## Targets", "", *render_targets(results), ""]
    return "\n".join(lines)


def render_targets(results: list[CaseResult]) -> list[str]:
    lines = []
    within = [r for r in results if r.overhead <= TARGET_OVERHEAD]
    off_chain = [r for r in results if r.off_chain_overhead <= TARGET_OVERHEAD]
    verified = [r for r in results if r.verification_overhead <= TARGET_OVERHEAD]
    lines.append(
        f"- Verification overhead at most {TARGET_OVERHEAD:.0%}: met in "
        f"{len(verified)} of {len(results)} cases{_case_list(verified)}."
    )
    lines.append(
        f"- Overhead at most {TARGET_OVERHEAD:.0%}: met in {len(within)} of "
        f"{len(results)} cases{_case_list(within)}. Off-chain overhead at most "
        f"{TARGET_OVERHEAD:.0%}: met in {len(off_chain)} of {len(results)} "
        f"cases{_case_list(off_chain)}."
    )
    devices, parameters = TARGET_CASE
    matching = [
        r
        for r in results
        if r.devices == devices and abs(r.parameters - parameters) < parameters / 10
    ]
    if matching:
        case = matching[0]
        verdict = "met" if case.round <= TARGET_SECONDS else "missed"
        lines.append(
            f"- A round of {devices} devices with a {case.parameters:,}-parameter "
            f"model within {TARGET_SECONDS:.0f} s: {case.round:.1f} s ({verdict})."
        )
    else:
        lines.append(
            f"- A round of {devices} devices with a {parameters:,}-parameter model "
            f"within {TARGET_SECONDS:.0f} s: not measured in this run."
        )
    largest = max(results, key=lambda r: r.parameters * r.devices)
    increase = largest.round_peak_mib - largest.round_baseline_mib
    stack = largest.devices * largest.parameters * 4 / 2**20
    lines.append(
        f"- Peak RSS of the largest case ({largest.devices} devices, "
        f"{largest.parameters:,} parameters): {largest.round_peak_mib:,.0f} MiB "
        f"during the daemon round, {increase:,.0f} MiB above the "
        f"{largest.round_baseline_mib:,.0f} MiB that the process held before it. "
        f"The round's float32 update stack alone is {stack:,.0f} MiB. Plain FedAvg, "
        f"which stacks every update and converts the stack to float64, peaks at "
        f"{largest.plain_peak_mib:,.0f} MiB."
    )
    return lines


def _case_list(results: list[CaseResult]) -> str:
    if not results:
        return ""
    return " (" + ", ".join(f"{r.devices} x {r.parameters:,}" for r in results) + ")"


def progress(message: str) -> None:
    """Print a progress line to stderr, so that stdout keeps only the report."""
    print(f"[bench_rounds] {message}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's machine name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _sizes(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if not text:
        return default
    try:
        sizes = tuple(sorted(int(part) for part in text.split(",") if part))
    except ValueError:
        raise SystemExit(
            f"error: invalid size list {text!r}: expected comma-separated integers"
        ) from None
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"error: sizes must be positive integers, got {text!r}")
    return sizes


if __name__ == "__main__":
    sys.exit(main())
