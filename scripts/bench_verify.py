"""Measure the aggregator's provenance checks against bare crypto loops on Anvil.

Usage: .venv/bin/python scripts/bench_verify.py [--quick] [--out FILE]

Three parts, each printed as a Markdown section:

1. Offline checks per second on one thread: the signature check of
   ``ztfm_chain.aggregator.verify`` (``eip712.commitment_digest`` from the journal
   row, then ``eip712.recover_address``) plus the content SHA-256 of the update
   bytes. The same pass over the same commitments also runs a bare ``coincurve``
   public-key recovery loop and a bare ``hashlib.sha256`` loop. The loops take
   turns on chunks of 50 commitments, so load from other processes hits all of
   them alike, and every ratio is taken within one pass. A cProfile run then
   splits the time of the signature check into its steps.
2. The on-chain part of ``check_provenance``: real commitments on a local Anvil,
   checked one by one, with the single device-record read timed on its own.
3. Start-up sync of a device-status cache for 1,000 and 10,000 enrolled devices
   (200 and 1,000 with ``--quick``): ``DeviceEnrolled`` events read with
   ``iter_events``, then ``devicesOf`` in batches of 500, against one ``deviceOf``
   call per device.

Part 3 enrols most devices through a pipelined path. The registrar sends the real
``enrol`` transaction with the device's signed proof. The script signs it with a
fixed gas limit and waits only for the last receipt of every 100 transactions. It
then reads every device's status back, which must be Active.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

import coincurve
import eth_abi
import requests
import torch
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak
from web3 import Web3
from web3.exceptions import Web3RPCError

from ztfm_chain.aggregator import verify
from ztfm_chain.aggregator.journal import CommitmentRow
from ztfm_chain.chain.anvil import Anvil
from ztfm_chain.chain.client import ChainClient
from ztfm_chain.chain.deploy import RoleHolders, System, connect, deploy
from ztfm_chain.chain.events import iter_events
from ztfm_chain.chain.models import (
    AggregationRule,
    ModelParams,
    create_model,
    model_info,
    open_round,
)
from ztfm_chain.cli.common import dev_account
from ztfm_chain.fl.models import mlp_for_parameter_count
from ztfm_chain.identity import eip712, registrar
from ztfm_chain.identity.commitments import Commitment, sign_commitment, submit
from ztfm_chain.identity.registrar import DeviceStatus
from ztfm_chain.updates import ModelSchema, UpdateMeta, encode_update

# A CIDv1 (base32, 59 characters) as devices publish them.
CID = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
BASE_HASH = hashlib.sha256(b"base model").digest()
MEASUREMENT = hashlib.sha256(b"firmware").digest()
PARAMETER_COUNTS = (10_000, 100_000, 1_000_000)
# Distinct update blobs per size. Commitment i hashes blob i % BLOBS.
BLOBS = 4
# Commitments per turn when the offline loops take turns.
CHUNK = 50
CACHE_BATCH = 500
# Blocks per eth_getLogs request, the aggregator's default page size.
EVENT_PAGE = 2_000
# Gas limit of a pipelined enrol transaction, which is not estimated first. An enrol
# with a 59-character metadata CID used 87,081 gas in scripts/bench_gas.py.
ENROL_GAS = 200_000
# Pipelined transactions in flight at most. Anvil 1.7.1 in automine mode left ready
# transactions pending for good once more were waiting than fit in one block (30M
# gas, so 150 at ENROL_GAS), so the script waits for every window's last receipt.
ENROL_WINDOW = 100
# Target: the offline check of a 10,000-parameter update runs at half the bare
# recovery rate or faster.
TARGET_RATIO = 0.5


@dataclass(frozen=True)
class Mode:
    """Sizes of one run."""

    offline_commitments: int
    offline_repeats: int
    profile_calls: int
    onchain_commitments: int
    onchain_repeats: int
    cache_sizes: tuple[int, ...]
    cache_repeats: int


FULL = Mode(
    offline_commitments=1_000,
    offline_repeats=5,
    profile_calls=2_000,
    onchain_commitments=200,
    onchain_repeats=3,
    cache_sizes=(1_000, 10_000),
    cache_repeats=2,
)
QUICK = Mode(
    offline_commitments=200,
    offline_repeats=3,
    profile_calls=500,
    onchain_commitments=20,
    onchain_repeats=2,
    cache_sizes=(200, 1_000),
    cache_repeats=1,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200 offline commitments, 20 on chain, caches of 200 and 1,000 devices",
    )
    parser.add_argument("--out", help="also write the Markdown report to this file")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    torch.set_num_threads(1)

    started = time.perf_counter()
    sections: list[str] = []
    with Anvil(accounts=10) as node:
        client = ChainClient(node.url)
        roles = [dev_account(i) for i in range(6)]
        system = connect(
            client,
            deploy(
                client,
                roles[0],
                RoleHolders(
                    registrar=roles[1].address,
                    attestor=roles[2].address,
                    model_manager=roles[3].address,
                    aggregators=(roles[4].address,),
                ),
            ),
        )
        progress("offline checks")
        sections.append(measure_offline(system, mode))
        progress("profile of verify._check_signature")
        sections.append(render_profile(system, mode.profile_calls))
        progress("on-chain checks")
        sections.append(measure_onchain(system, roles, mode))
        sections.append(measure_cache(system, roles[1], mode))

    elapsed = time.perf_counter() - started
    text = render_header(elapsed) + "\n" + "\n".join(sections)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    return 0


# --- part 1: offline checks ---------------------------------------------------------


@dataclass(frozen=True)
class SignedCase:
    """N signed commitments over the update blobs of one model size."""

    parameters: int
    blobs: list[bytes]
    rows: list[CommitmentRow]
    keys: list[str]
    digests: list[bytes]
    recoverable: list[bytes]


def build_case(
    system: System, parameters: int, keys: list[LocalAccount], count: int
) -> SignedCase:
    schema = ModelSchema.from_module(mlp_for_parameter_count(parameters))
    generator = torch.Generator().manual_seed(parameters)
    blobs = []
    for index in range(BLOBS):
        tensors = {
            name: torch.randn(schema[name].shape, generator=generator) * 0.01
            for name in schema
        }
        meta = UpdateMeta(1, 1, "0x" + BASE_HASH.hex(), 100 + index, "delta")
        blobs.append(encode_update(tensors, meta))
    rows, digests, recoverable = [], [], []
    for index in range(count):
        key = keys[index % len(keys)]
        blob = blobs[index % BLOBS]
        commitment = Commitment(
            model_id=1,
            round=1,
            device=key.address,
            content_hash=hashlib.sha256(blob).digest(),
            cid=CID,
            sample_count=100 + index % BLOBS,
            base_model_hash=BASE_HASH,
        )
        message = commitment.message(
            chain_id=system.client.chain_id,
            model_registry=system.deployment.model_registry,
            nonce=index,
        )
        signature = eip712.sign(message, key)
        rows.append(_row(commitment, index, signature))
        digests.append(eip712.digest(message))
        recoverable.append(signature[:64] + bytes([signature[64] - 27]))
    return SignedCase(
        parameters, blobs, rows, [k.address for k in keys], digests, recoverable
    )


def _row(commitment: Commitment, index: int, signature: bytes) -> CommitmentRow:
    # Only the fields the signature check reads need real values.
    return CommitmentRow(
        tx_hash="0x" + index.to_bytes(32, "big").hex(),
        log_index=0,
        block=index + 2,
        model_id=commitment.model_id,
        round=commitment.round,
        device=commitment.device,
        content_hash="0x" + commitment.content_hash.hex(),
        cid=commitment.cid,
        sample_count=commitment.sample_count,
        base_model_hash="0x" + commitment.base_model_hash.hex(),
        nonce=index,
        signer=commitment.device,
        signature="0x" + signature.hex(),
        status="pending",
    )


def make_loops(
    system: System, case: SignedCase
) -> dict[str, Callable[[int, int], None]]:
    """Return the three loops over rows ``start..stop`` of a case.

    Each loop raises AssertionError if a check fails.
    """
    count = len(case.rows)
    blobs = [case.blobs[i % BLOBS] for i in range(count)]
    keys = [case.keys[i % len(case.keys)] for i in range(count)]

    def bare_recovery(start: int, stop: int) -> None:
        for index in range(start, stop):
            coincurve.PublicKey.from_signature_and_message(
                case.recoverable[index], case.digests[index], hasher=None
            )

    def bare_sha256(start: int, stop: int) -> None:
        for index in range(start, stop):
            hashlib.sha256(blobs[index]).digest()

    def product_check(start: int, stop: int) -> None:
        # The signature step of check_provenance and the hash step of check_content.
        for index in range(start, stop):
            row = case.rows[index]
            verdict = verify._check_signature(system, row, keys[index])
            if not verdict.ok:
                raise AssertionError(f"signature check failed: {verdict}")
            actual = "0x" + hashlib.sha256(blobs[index]).hexdigest()
            if actual != row.content_hash.lower():
                raise AssertionError(f"content hash mismatch for {row.tx_hash}")

    return {
        "bare recovery": bare_recovery,
        "bare sha256": bare_sha256,
        "product check": product_check,
    }


def measure_offline(system: System, mode: Mode) -> str:
    keys = [_device_key(f"offline-{i}") for i in range(mode.offline_commitments)]
    cases = [
        build_case(system, p, keys, mode.offline_commitments) for p in PARAMETER_COUNTS
    ]
    loops = {case.parameters: make_loops(system, case) for case in cases}
    names = list(next(iter(loops.values())))
    # Seconds per item by (parameters, loop name), one entry per pass. Within a pass
    # the loops take turns on chunks of CHUNK rows, so a burst of load from other
    # processes lands on all of them.
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(mode.offline_repeats):
        for case in cases:
            totals = dict.fromkeys(names, 0.0)
            for chunk, start in enumerate(range(0, len(case.rows), CHUNK)):
                stop = min(start + CHUNK, len(case.rows))
                shift = chunk % len(names)
                for name in names[shift:] + names[:shift]:
                    began = time.perf_counter()
                    loops[case.parameters][name](start, stop)
                    totals[name] += time.perf_counter() - began
            for name, total in totals.items():
                times.setdefault((case.parameters, name), []).append(
                    total / len(case.rows)
                )
    lines = [
        "## Offline checks per second, one thread",
        "",
        f"{mode.offline_commitments:,} signed commitments per update size, "
        f"{BLOBS} distinct update blobs per size. In each pass the three loops take "
        f"turns on chunks of {CHUNK} commitments. Rates are medians of "
        f"{mode.offline_repeats} passes, ratios are medians of the per-pass ratios.",
        "",
        "| update | bytes | bare recovery /s | bare sha256 /s | both bare loops /s "
        "| product check /s | check / bare recovery |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts = []
    for case in cases:

        def rate(name: str, parameters: int = case.parameters) -> float:
            return 1 / statistics.median(times[(parameters, name)])

        def ratio(name: str, parameters: int = case.parameters) -> float:
            pairs = zip(
                times[(parameters, "bare recovery")],
                times[(parameters, name)],
                strict=True,
            )
            return statistics.median(bare / other for bare, other in pairs)

        check_ratio = ratio("product check")
        both = 1 / (1 / rate("bare recovery") + 1 / rate("bare sha256"))
        lines.append(
            f"| {case.parameters:,} parameters | {len(case.blobs[0]):,} "
            f"| {rate('bare recovery'):,.0f} | {rate('bare sha256'):,.0f} "
            f"| {both:,.0f} | {rate('product check'):,.0f} | {check_ratio:.2f} |"
        )
        verdicts.append((case.parameters, check_ratio))
    small, check_ratio = verdicts[0]
    lines += [
        "",
        "Both bare loops /s is the rate of a bare recovery plus a bare SHA-256 of "
        "the same update, the upper bound for any check that does both.",
        "",
        f"Target: the product check at {TARGET_RATIO:.0%} or more of the bare "
        f"recovery rate for {small:,}-parameter updates. Product check: "
        f"{check_ratio:.2f} ({'met' if check_ratio >= TARGET_RATIO else 'missed'}).",
        "",
    ]
    return "\n".join(lines)


def render_profile(system: System, calls: int) -> str:
    """Profile verify._check_signature and attribute its time to its steps."""
    key = _device_key("profile")
    commitment = Commitment(1, 1, key.address, BASE_HASH, CID, 100, BASE_HASH)
    message = commitment.message(
        chain_id=system.client.chain_id,
        model_registry=system.deployment.model_registry,
        nonce=0,
    )
    row = _row(commitment, 0, eip712.sign(message, key))
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        verify._check_signature(system, row, key.address)
    profiler.disable()
    stats = pstats.Stats(profiler)
    # (file suffix, function name) -> cumulative seconds
    cumulative: dict[tuple[str, str], float] = {}
    for (path, _, function), stat in stats.stats.items():  # type: ignore[attr-defined]
        label = (os.path.basename(path), function)
        cumulative[label] = cumulative.get(label, 0.0) + stat[3]
    total = cumulative[("verify.py", "_check_signature")]
    steps = [
        (
            "`eip712.commitment_digest`: struct packed by hand, 3 Keccak-256 hashes",
            ("eip712.py", "commitment_digest"),
        ),
        (
            "`eip712.recover_address`: form checks, recovery, address hash",
            ("eip712.py", "recover_address"),
        ),
        (
            "of which `native.recover_public_key` (libsecp256k1 recovery)",
            ("native.py", "recover_public_key"),
        ),
        (
            "every `native.keccak256` call (4 per check)",
            ("native.py", "keccak256"),
        ),
        (
            "`bytes.fromhex` of the row's hex fields and the key",
            ("~", "<built-in method fromhex>"),
        ),
    ]
    lines = [
        "## Where `verify._check_signature` spends its time",
        "",
        f"cProfile over {calls:,} calls on one relayed commitment. The profiler slows "
        "every call, so read the shares, not the absolute times.",
        "",
        "| step | share of `_check_signature` |",
        "| --- | ---: |",
    ]
    for label, name in steps:
        lines.append(f"| {label} | {cumulative.get(name, 0.0) / total:.0%} |")
    lines.append("")
    return "\n".join(lines)


# --- part 2: the on-chain part of check_provenance ------------------------------------


def measure_onchain(system: System, roles: list[LocalAccount], mode: Mode) -> str:
    keys = [_device_key(f"onchain-{i}") for i in range(mode.onchain_commitments)]
    blob = b"update bytes"
    rows, enrol_times = _commit_onchain(system, roles, keys, blob)

    full, record, raw, offline, batched = [], [], [], [], []
    reads_per_check = _count_reads(system, rows[0])
    session = requests.Session()
    for _ in range(mode.onchain_repeats):
        start = time.perf_counter()
        verdicts = verify.check_provenance_many(system, rows, [False] * len(rows))
        batched.append((time.perf_counter() - start) / len(rows))
        if not all(v.ok for v in verdicts):
            raise AssertionError(f"batched provenance failed: {verdicts}")
        for row in rows:
            device = Web3.to_checksum_address(row.device)
            start = time.perf_counter()
            _daemon_provenance(system, row)
            full.append(time.perf_counter() - start)
            start = time.perf_counter()
            registrar.device_record(system, device, row.block - 1)
            record.append(time.perf_counter() - start)
            raw.append(_raw_device_read(system, session, device, row.block - 1))
            start = time.perf_counter()
            verify._check_signature(system, row, device)
            hashlib.sha256(blob).hexdigest()
            offline.append(time.perf_counter() - start)

    full_ms = statistics.median(full) * 1e3
    record_ms = statistics.median(record) * 1e3
    raw_ms = statistics.median(raw) * 1e3
    offline_ms = statistics.median(offline) * 1e3
    batched_ms = statistics.median(batched) * 1e3
    return "\n".join(
        [
            "## The on-chain part of `check_provenance`",
            "",
            f"{len(rows)} relayed commitments on Anvil, each checked "
            f"{mode.onchain_repeats} times. Each check is followed by its single "
            "device-record read through web3, the same read as a raw JSON-RPC "
            "request, and its offline part. Before each pass, "
            "`check_provenance_many` checks all of them together, as the daemon "
            "does with the commitments of one pass. Medians per commitment.",
            "",
            "| measurement | ms | per second |",
            "| --- | ---: | ---: |",
            f"| `check_provenance_many` over all {len(rows)} commitments, per "
            f"commitment | {batched_ms:.2f} | {1e3 / batched_ms:,.0f} |",
            f"| `model_info` + `check_provenance` of one commitment alone "
            f"({reads_per_check} JSON-RPC requests) "
            f"| {full_ms:.2f} | {1e3 / full_ms:,.0f} |",
            f"| one `deviceWithKey` read at `block - 1` through web3 "
            f"| {record_ms:.2f} | {1e3 / record_ms:,.0f} |",
            "| the same read as one `requests` POST with precomputed calldata "
            f"| {raw_ms:.2f} | {1e3 / raw_ms:,.0f} |",
            f"| offline part (signature check and SHA-256) | {offline_ms:.2f} "
            f"| {1e3 / offline_ms:,.0f} |",
            "",
            f"Checked together, a commitment costs {batched_ms / full_ms:.0%} of a "
            f"check on its own. On its own, the JSON-RPC requests take "
            f"{1 - offline_ms / full_ms:.0%} of a full check, "
            f"and a read through web3 takes {record_ms / raw_ms:.1f} times as long as "
            "the raw request. The difference is Python on the client side: web3 "
            "validating, encoding and decoding. For comparison, "
            f"`registrar.enrol_device` took {statistics.median(enrol_times) * 1e3:.1f} "
            f"ms per device (median of {len(enrol_times)}).",
            "",
        ]
    )


def _commit_onchain(
    system: System, roles: list[LocalAccount], keys: list[LocalAccount], blob: bytes
) -> tuple[list[CommitmentRow], list[float]]:
    """Enrol, attest and commit one relayed update per key.

    Returns the journal rows of the commitments and the time of each
    ``registrar.enrol_device`` call.
    """
    _, registrar_key, attestor, manager, aggregator, relayer = roles
    enrol_times = []
    for key in keys:
        start = time.perf_counter()
        registrar.enrol_device(system, registrar_key, key)
        enrol_times.append(time.perf_counter() - start)
        registrar.attest_device(system, attestor, key.address, measurement=MEASUREMENT)

    model_id = create_model(
        system,
        manager,
        base_model_hash=BASE_HASH,
        base_model_cid=CID,
        params=ModelParams(
            min_trust=2_000,
            quorum=1,
            round_duration=36_000,
            aggregation_rule=AggregationRule.FEDAVG,
        ),
        segments=[1],
        aggregators=[aggregator.address],
    )
    round_ = open_round(system, manager, model_id)
    first_block = system.client.w3.eth.block_number + 1
    for key in keys:
        commitment = Commitment(
            model_id=model_id,
            round=round_,
            device=key.address,
            content_hash=hashlib.sha256(blob).digest(),
            cid=CID,
            sample_count=100,
            base_model_hash=BASE_HASH,
        )
        submit(system, relayer, commitment, sign_commitment(system, key, commitment))

    rows = [
        CommitmentRow.from_event(entry)
        for entry in iter_events(
            system.client,
            system.models.events.UpdateCommitted,
            first_block,
            system.client.w3.eth.block_number,
            page_size=EVENT_PAGE,
        )
    ]
    if len(rows) != len(keys):
        raise AssertionError(f"expected {len(keys)} commitments, read {len(rows)}")
    return rows, enrol_times


def _daemon_provenance(system: System, row: CommitmentRow) -> None:
    """Run the daemon's provenance step: the model at block - 1, then the checks."""
    model = model_info(system, row.model_id, row.block - 1)
    verdict = verify.check_provenance(system, model, row, duplicate=False)
    if not verdict.ok:
        raise AssertionError(f"provenance failed for {row.tx_hash}: {verdict}")


def _raw_device_read(
    system: System, session: requests.Session, device: str, block: int
) -> float:
    """Time one eth_call of deviceWithKey sent with requests, without web3."""
    data = system.devices.functions.deviceWithKey(device)._encode_transaction_data()
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "eth_call",
        "params": [{"to": system.devices.address, "data": data}, hex(block)],
    }
    start = time.perf_counter()
    response = session.post(system.client.url, json=body, timeout=30).json()
    elapsed = time.perf_counter() - start
    if "result" not in response:
        raise AssertionError(f"raw eth_call failed: {response}")
    return elapsed


def _count_reads(system: System, row: CommitmentRow) -> int:
    """Return how many ChainClient.read calls one daemon provenance check makes."""
    client = system.client
    original = client.read
    count = 0

    def counting(call: Callable[[], Any]) -> Any:
        nonlocal count
        count += 1
        return original(call)

    client.read = counting  # type: ignore[method-assign]
    try:
        model = model_info(system, row.model_id, row.block - 1)
        verify.check_provenance(system, model, row, duplicate=False)
    finally:
        del client.read
    return count


# --- part 3: device-status cache ------------------------------------------------------


def measure_cache(system: System, registrar_key: LocalAccount, mode: Mode) -> str:
    lines = [
        "## Start-up sync of a device-status cache",
        "",
        f"All `DeviceEnrolled` events read with `iter_events` ({EVENT_PAGE:,} blocks "
        f"per request, one block per enrolment), then the records read with "
        f"`devicesOf` in batches of {CACHE_BATCH}, or with one `deviceOf` call per "
        f"device. {_runs(mode.cache_repeats)}",
        "",
        "| devices | enrolment, s | enrolment, ms per device | events, s "
        "| `devicesOf` batches, s "
        "| events + batches, s | events + per-device `deviceOf`, s | speed-up |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    notes = []
    for size in mode.cache_sizes:
        enrolled = _enrolled_devices(system)
        progress(f"enrolling devices {len(enrolled)}..{size}")
        start = time.perf_counter()
        _enrol_pipelined(
            system, registrar_key, range(len(enrolled), max(size, len(enrolled)))
        )
        enrol_seconds = time.perf_counter() - start
        enrol_ms = enrol_seconds * 1e3 / max(1, size - len(enrolled))
        progress(f"cache sync with {size} devices")
        runs: dict[str, list[float]] = {}
        for _ in range(mode.cache_repeats):
            start = time.perf_counter()
            devices = _enrolled_devices(system)
            runs.setdefault("events", []).append(time.perf_counter() - start)
            start = time.perf_counter()
            records = _batched_records(system, devices)
            runs.setdefault("batched", []).append(time.perf_counter() - start)
            start = time.perf_counter()
            for device in devices:
                system.client.call(system.devices.functions.deviceOf(device))
            runs.setdefault("per-device", []).append(time.perf_counter() - start)
        inactive = [d for d, r in records.items() if r[0] != DeviceStatus.ACTIVE]
        if len(devices) < size or inactive:
            raise AssertionError(
                f"expected {size} active devices, read {len(devices)} with "
                f"{len(inactive)} not active"
            )
        events = statistics.median(runs["events"])
        batched = statistics.median(runs["batched"])
        per_device = statistics.median(runs["per-device"])
        lines.append(
            f"| {len(devices):,} | {enrol_seconds:.1f} | {enrol_ms:.1f} "
            f"| {events:.2f} | {batched:.2f} "
            f"| {events + batched:.2f} | {events + per_device:.2f} "
            f"| {(events + per_device) / (events + batched):.1f}x |"
        )
        notes.append(_single_call_note(system, devices))
    batch_gas = system.devices.functions.devicesOf(devices[:CACHE_BATCH]).estimate_gas()
    gas_limit = int(system.client.w3.eth.get_block("latest")["gasLimit"])
    lines += [
        "",
        "Enrolment is the pipelined path described at the top of the script, for "
        "the devices added to reach each size, one transaction per block. The "
        "`deviceOf` column includes the "
        "event read, which it needs to find the devices. One `devicesOf` batch of "
        f"{CACHE_BATCH} costs {batch_gas:,} gas by `eth_estimateGas`. Anvil's block "
        f"gas limit, which also caps an `eth_call`, is {gas_limit:,}, so one call "
        f"fits about {gas_limit * CACHE_BATCH // batch_gas:,} devices (an estimate "
        "from the batch's gas). " + " ".join(notes),
        "",
    ]
    return "\n".join(lines)


def _runs(count: int) -> str:
    if count == 1:
        return "One run of each method."
    return f"Medians of {count} runs, the methods taking turns."


def _single_call_note(system: System, devices: list[str]) -> str:
    """Try one devicesOf call over every device and describe the outcome."""
    start = time.perf_counter()
    try:
        system.client.call(system.devices.functions.devicesOf(devices))
    except Web3RPCError as exc:
        error = exc.rpc_response.get("error") if exc.rpc_response else None
        message = error.get("message") if isinstance(error, dict) else None
        return (
            f"One `devicesOf` call over all {len(devices):,} devices fails with "
            f"{message or exc!s}."
        )
    elapsed = time.perf_counter() - start
    return (
        f"One `devicesOf` call over all {len(devices):,} devices succeeds in "
        f"{elapsed:.2f} s."
    )


def _enrolled_devices(system: System) -> list[str]:
    seen: dict[str, None] = {}
    for entry in iter_events(
        system.client,
        system.devices.events.DeviceEnrolled,
        system.deployment.deployed_at_block,
        system.client.w3.eth.block_number,
        page_size=EVENT_PAGE,
    ):
        seen[str(entry["args"]["device"])] = None
    return list(seen)


def _batched_records(system: System, devices: list[str]) -> dict[str, tuple[Any, ...]]:
    records: dict[str, tuple[Any, ...]] = {}
    for start in range(0, len(devices), CACHE_BATCH):
        chunk = devices[start : start + CACHE_BATCH]
        found, keys = system.client.call(system.devices.functions.devicesOf(chunk))
        for device, record, key in zip(chunk, found, keys, strict=True):
            records[device] = (*record, key)
    return records


def _enrol_pipelined(
    system: System, registrar_key: LocalAccount, indices: range
) -> None:
    """Send real enrol transactions back to back, waiting after every window."""
    client = system.client
    w3 = client.w3
    nonce = w3.eth.get_transaction_count(registrar_key.address, "pending")
    base_fee = int(w3.eth.get_block("latest")["baseFeePerGas"])
    (abi,) = [e for e in system.devices.abi if e.get("name") == "enrol"]
    types = [str(i["type"]) for i in abi["inputs"]]
    selector = keccak(f"enrol({','.join(types)})".encode())[:4]

    deadline = 0
    last = None
    for position, index in enumerate(indices):
        if position % CACHE_BATCH == 0:
            # Proofs expire PROOF_LIFETIME seconds after the chain time they name.
            block_time = int(w3.eth.get_block("latest")["timestamp"])
            deadline = block_time + registrar.PROOF_LIFETIME
        key = _device_key(f"cache-{index}")
        proof = registrar.sign_enrolment(
            system,
            key,
            registrar=registrar_key.address,
            roles=registrar.ROLE_TRAINER,
            segment=1,
            metadata_cid="",
            deadline=deadline,
        )
        data = selector + eth_abi.encode(
            types, [key.address, registrar.ROLE_TRAINER, 1, "", deadline, proof]
        )
        signed = registrar_key.sign_transaction(
            {
                "to": system.devices.address,
                "data": data,
                "value": 0,
                "nonce": nonce,
                "gas": ENROL_GAS,
                "maxFeePerGas": 10 * base_fee + 10**9,
                "maxPriorityFeePerGas": 10**9,
                "chainId": client.chain_id,
                "type": 2,
            }
        )
        last = w3.eth.send_raw_transaction(signed.raw_transaction)
        nonce += 1
        if (position + 1) % ENROL_WINDOW == 0:
            client.wait(last)

    if last is not None:
        client.wait(last)
    # The client's cached nonce of the registrar is stale now.
    client.reset_nonces()


# --- shared ---------------------------------------------------------------------------


def progress(message: str) -> None:
    """Print a progress line to stderr, so that stdout keeps only the report."""
    print(f"[bench_verify] {message}", file=sys.stderr, flush=True)


def _device_key(label: str) -> LocalAccount:
    key: LocalAccount = Account.from_key(hashlib.sha256(label.encode()).digest())
    return key


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


def render_header(elapsed: float) -> str:
    command = " ".join([".venv/bin/python scripts/bench_verify.py", *sys.argv[1:]])
    return "\n".join(
        [
            "# Provenance-check benchmark",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d} with `{command}` on "
            f"{os.cpu_count()} cores ({cpu_model()}), Python "
            f"{platform.python_version()}, coincurve {version('coincurve')}, "
            f"eth-account {version('eth-account')}, Anvil on 127.0.0.1. The run took "
            f"{elapsed:.0f} s.",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
