"""Measure gas per contract operation on a local Anvil and print a Markdown table.

Usage: .venv/bin/python scripts/bench_gas.py [--devices 10,100,1000] [--out FILE]

Every figure is ``gasUsed`` from a real receipt. The per-round figures enrol, attest and
commit ``N`` devices, finalize the round and write all their trust scores in batches
of 100, then divide the round's gas (commitments, finalization, trust) by ``N``.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import statistics
import sys
from datetime import UTC, datetime
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ztfm_chain.chain.anvil import Anvil
from ztfm_chain.chain.client import ChainClient
from ztfm_chain.chain.deploy import RoleHolders, System, connect, deploy
from ztfm_chain.chain.models import (
    ModelParams,
    close_round,
    create_model,
    finalize_round,
    open_round,
)
from ztfm_chain.cli.common import dev_account
from ztfm_chain.identity import registrar
from ztfm_chain.identity.commitments import Commitment, sign_commitment, submit

# A CIDv1 (base32, 59 characters) as devices publish them.
CID = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
BASE_HASH = hashlib.sha256(b"base model").digest()
TRUST_BATCH = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--devices",
        default="10,100",
        help="comma-separated round sizes for the gas-per-update table",
    )
    parser.add_argument("--out", help="also write the Markdown to this file")
    args = parser.parse_args()
    sizes = [int(n) for n in args.devices.split(",") if n]
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
        operations = measure_operations(system, roles)
        per_round = [measure_round(system, roles, n) for n in sizes]
    text = render(operations, per_round)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)


def measure_operations(system: System, roles: list[LocalAccount]) -> dict[str, int]:
    _, registrar_key, attestor, manager, aggregator, relayer = roles
    gas: dict[str, list[int]] = {}

    def record(name: str, receipt: Any) -> None:
        gas.setdefault(name, []).append(int(receipt["gasUsed"]))

    model_id = create_model(
        system,
        manager,
        base_model_hash=BASE_HASH,
        base_model_cid=CID,
        params=ModelParams(min_trust=2000, quorum=1, round_duration=3600),
        segments=[1],
        aggregators=[aggregator.address],
    )
    devices = [Account.create() for _ in range(5)]
    for device in devices:
        record(
            "enrol (registrar, with the device's proof, 59-char metadata CID)",
            registrar.enrol_device(system, registrar_key, device, metadata_cid=CID),
        )
        record(
            "attest (relayed attestor statement)",
            registrar.attest_device(
                system, attestor, device.address, measurement=BASE_HASH
            ),
        )
        system.client.rpc("anvil_setBalance", [device.address, hex(10**18)])
    for round_index in range(2):
        round_ = open_round(system, manager, model_id)
        record("open round", _last_receipt(system))
        for i, device in enumerate(devices):
            commitment = Commitment(
                model_id=model_id,
                round=round_,
                device=device.address,
                content_hash=hashlib.sha256(f"{round_}-{i}".encode()).digest(),
                cid=CID,
                sample_count=100,
                base_model_hash=BASE_HASH,
            )
            label = "first" if round_index == 0 else "later"
            if i % 2 == 0:
                receipt = submit(system, device, commitment)
                record(f"commit, direct by the device ({label} commitment)", receipt)
            else:
                signature = sign_commitment(system, device, commitment)
                receipt = submit(system, relayer, commitment, signature)
                record(f"commit, relayed with EIP-712 signature ({label})", receipt)
        close_round(system, aggregator, model_id, round_)
        record(
            "finalize round (new model, digest, report)",
            finalize_round(
                system,
                aggregator,
                model_id,
                round_,
                new_model_hash=BASE_HASH,
                new_model_cid=CID,
                accepted_digest=BASE_HASH,
                accepted_count=len(devices),
                report_hash=BASE_HASH,
                report_cid=CID,
            ),
        )
    for size in (10, 100):
        batch = [Account.create() for _ in range(size)]
        for device in batch:
            registrar.enrol_device(system, registrar_key, device)
        receipt = system.client.transact(
            system.trust.functions.setScores(
                model_id,
                [d.address for d in batch],
                [6000 + i for i in range(size)],
                [0] * size,
            ),
            aggregator,
        )
        record(f"trust batch of {size} (first write)", receipt)
    return {name: int(statistics.median(values)) for name, values in gas.items()}


def measure_round(
    system: System, roles: list[LocalAccount], devices_count: int
) -> tuple[int, int, int, int]:
    _, registrar_key, attestor, manager, aggregator, relayer = roles
    model_id = create_model(
        system,
        manager,
        base_model_hash=BASE_HASH,
        base_model_cid=CID,
        params=ModelParams(min_trust=2000, quorum=1, round_duration=36_000),
        segments=[1],
        aggregators=[aggregator.address],
    )
    devices = [Account.create() for _ in range(devices_count)]
    for device in devices:
        registrar.enrol_device(system, registrar_key, device)
        registrar.attest_device(system, attestor, device.address, measurement=BASE_HASH)
    round_ = open_round(system, manager, model_id)
    commit_gas = 0
    for i, device in enumerate(devices):
        commitment = Commitment(
            model_id=model_id,
            round=round_,
            device=device.address,
            content_hash=hashlib.sha256(f"{i}".encode()).digest(),
            cid=CID,
            sample_count=100,
            base_model_hash=BASE_HASH,
        )
        signature = sign_commitment(system, device, commitment)
        commit_gas += int(submit(system, relayer, commitment, signature)["gasUsed"])
    close_round(system, aggregator, model_id, round_)
    finalize_gas = int(
        finalize_round(
            system,
            aggregator,
            model_id,
            round_,
            new_model_hash=BASE_HASH,
            new_model_cid=CID,
            accepted_digest=BASE_HASH,
            accepted_count=devices_count,
            report_hash=BASE_HASH,
            report_cid=CID,
        )["gasUsed"]
    )
    trust_gas = 0
    for start in range(0, devices_count, TRUST_BATCH):
        chunk = devices[start : start + TRUST_BATCH]
        trust_gas += int(
            system.client.transact(
                system.trust.functions.setScores(
                    model_id,
                    [d.address for d in chunk],
                    [5500] * len(chunk),
                    [0] * len(chunk),
                ),
                aggregator,
            )["gasUsed"]
        )
    return devices_count, commit_gas, finalize_gas, trust_gas


def render(
    operations: dict[str, int], per_round: list[tuple[int, int, int, int]]
) -> str:
    lines = [
        "## Gas per operation",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} with `{' '.join(sys.argv)}` on "
        f"{platform.machine()} (Python {platform.python_version()}), Anvil, solcjs "
        "0.8.37 with 200 optimizer runs, EVM version shanghai. Medians of 5 devices "
        "for per-device operations and of 2 rounds for round operations.",
        "",
        "| operation | gas |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {gas:,} |" for name, gas in operations.items()]
    lines += [
        "",
        "## Gas per accepted update, by round size",
        "",
        "Relayed commitments, one finalization, trust scores written in batches of "
        f"{TRUST_BATCH}.",
        "",
        "| devices | commitments | finalize | trust writes | total per update |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, commit, finalize, trust in per_round:
        total = (commit + finalize + trust) / n
        lines.append(
            f"| {n:,} | {commit // n:,} each | {finalize:,} | {trust // n:,} each "
            f"| {total:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def _last_receipt(system: System) -> Any:
    block = system.client.w3.eth.get_block("latest", full_transactions=False)
    return system.client.w3.eth.get_transaction_receipt(block["transactions"][-1])


if __name__ == "__main__":
    main()
