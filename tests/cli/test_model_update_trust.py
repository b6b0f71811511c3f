"""``ztfm model``, ``ztfm update`` and ``ztfm trust`` on one model of the session chain."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import pytest
import safetensors.torch

from ztfm_chain.aggregator.reasons import Reason
from ztfm_chain.chain.models import close_round, finalize_round
from ztfm_chain.cli.common import dev_account
from ztfm_chain.fl.models import DIGITS_WIDTHS, init_mlp_state
from ztfm_chain.updates import encode_model

from .conftest import MEASUREMENT, Cli, assert_one_line_error

AGGREGATOR = dev_account(4)
# A CID of some other bytes: the chain stores a report CID without reading it.
REPORT_CID = "bafkreib5wjpwafqz3vfq3ohlv2zt6fhfwcfdwllwnonk6pxuwelc2hnxey"


def words(command: str) -> list[str]:
    """Split a command line as a shell would."""
    return shlex.split(command)


def enrol_device(cli: Cli, name: str) -> str:
    address: str = cli.json("device", "keygen", name)["address"]
    cli.ok("device", "enrol", name)
    cli.ok("device", "attest", name, "--measurement", MEASUREMENT)
    return address


@pytest.fixture(scope="module")
def model(deployed_cli: Cli) -> int:
    created = deployed_cli.json(
        "model",
        "create",
        "--digits",
        "--seed",
        "3",
        "--quorum",
        "2",
        "--rule",
        "trimmed-mean",
    )
    model_id: int = created["model_id"]
    return model_id


def test_model_create_digits(deployed_cli: Cli, model: int) -> None:
    status = deployed_cli.json("model", "status", str(model))
    expected = encode_model(init_mlp_state(DIGITS_WIDTHS, seed=3))
    assert status["base_model_hash"] == "0x" + hashlib.sha256(expected).hexdigest()
    assert status["aggregation_rule"] == "TRIMMED_MEAN"
    assert status["quorum"] == 2
    assert status["current_round"] == 0
    stored = deployed_cli.ok(
        "ipfs",
        "cat",
        status["base_model_cid"],
        "--store",
        str(deployed_cli.home / "store"),
    )
    assert stored.stdout_bytes == expected


def test_model_create_from_file(deployed_cli: Cli, tmp_path: Path) -> None:
    state = init_mlp_state((4, 3, 2), seed=1)
    path = tmp_path / "base.safetensors"
    safetensors.torch.save_file(state, str(path))
    created = deployed_cli.json(
        "model", "create", "--base", str(path), "--segment", "2"
    )
    assert created["segments"] == [2]
    assert (
        created["base_model_hash"]
        == "0x" + hashlib.sha256(encode_model(state)).hexdigest()
    )

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    assert_one_line_error(
        deployed_cli("model", "create", "--base", str(garbage)), 2, str(garbage)
    )
    not_mlp = tmp_path / "conv.safetensors"
    safetensors.torch.save_file({"conv.weight": state["layers.0.weight"]}, str(not_mlp))
    assert_one_line_error(
        deployed_cli("model", "create", "--base", str(not_mlp)), 2, "conv.weight"
    )


def test_model_bad_arguments_exit_2(deployed_cli: Cli, model: int) -> None:
    cases = [
        (["model", "create", "--digits", "--rule", "mean"], "'mean'"),
        (["model", "create", "--digits", "--min-trust", "10001"], "--min-trust 10001"),
        (["model", "create", "--digits", "--quorum", "0"], "--quorum 0"),
        (["model", "create"], "--digits"),
        (["model", "status", "999"], "model 999 not found"),
        (["model", "open-round", "0"], "model 0 not found"),
    ]
    for args, fragment in cases:
        assert_one_line_error(deployed_cli(*args), 2, fragment)


def test_round_train_submit_verify(
    deployed_cli: Cli, model: int, tmp_path: Path
) -> None:
    cli = deployed_cli
    first = enrol_device(cli, "trainer-1")
    second = enrol_device(cli, "trainer-2")
    train = f"update train {model} --key trainer-1 --of 4"
    not_open = cli(*words(f"{train} --data-shard 0"))
    assert_one_line_error(not_open, 2, "not open")

    opened = cli.json(*words(f"model open-round {model}"))
    assert opened["round"] == 1
    assert opened["state"] == "OPEN"

    other_round = cli(*words(f"{train} --data-shard 0 --round 2"))
    assert_one_line_error(other_round, 2, "round 1 is open: pass --round 1")

    bad_shard = cli(*words(f"{train} --data-shard 4"))
    assert_one_line_error(bad_shard, 2, "--data-shard 4")
    sent = cli.json(*words(f"{train} --data-shard 1 --epochs 1 --relayer dev:5"))
    assert sent["device"] == first
    assert sent["round"] == 1
    assert sent["relayed"] is True
    assert sent["sample_count"] > 0

    verify = f"update verify {sent['cid']} --model {model} --round 1 --device"
    report = cli.json(*words(f"{verify} trainer-1"))
    assert report["ok"] is True
    names = [check["name"] for check in report["checks"]]
    assert names == ["fetch", "commitment", "CID", "SHA-256", "decode"]

    # A second device commits the same bytes, read back from the store as a file.
    store = cli.home / "store"
    update_file = tmp_path / "update.safetensors"
    update_file.write_bytes(
        cli.ok(*words(f"ipfs cat {sent['cid']} --store {store}")).stdout_bytes
    )
    digest = hashlib.sha256(update_file.read_bytes()).hexdigest()
    assert "0x" + digest == sent["content_hash"]
    submit = f"update submit {update_file} --model {model} --key trainer-2"
    wrong_round = cli(*words(f"{submit} --round 2"))
    assert_one_line_error(wrong_round, 2, "round 2")
    submitted = cli.json(*words(f"{submit} --relayer dev:5"))
    assert submitted["device"] == second
    assert submitted["cid"] == sent["cid"]
    human = cli.ok(*words(f"{verify} {second}"))
    assert "FAILED" not in human.stdout
    assert "SHA-256" in human.stdout

    absent = cli.json("device", "keygen", "never-trained")["address"]
    failed = cli("--json", *words(f"{verify} {absent}"))
    assert failed.exit_code == 1
    checks = {c["name"]: c["ok"] for c in json.loads(failed.stdout)["checks"]}
    assert checks == {"fetch": True, "commitment": False}

    rounds = cli.json("model", "rounds", str(model))
    outcomes = [(r["round"], r["state"], r["report_cid"]) for r in rounds]
    assert outcomes == [(1, "OPEN", None)]


def test_round_outcome_and_trust(deployed_cli: Cli) -> None:
    cli = deployed_cli
    model = cli.json(*words("model create --digits --quorum 2"))["model_id"]
    cli.ok("model", "open-round", str(model))
    first = enrol_device(cli, "scored-1")
    second = enrol_device(cli, "scored-2")
    system = cli.system()
    system.client.transact(
        system.trust.functions.setScores(
            model, [first, second], [6200, 3100], [Reason.ACCEPTED, Reason.ANOMALOUS]
        ),
        AGGREGATOR,
    )
    # One accepted update is below the quorum of 2, so the round fails.
    close_round(system, AGGREGATOR, model, 1)
    finalize_round(
        system,
        AGGREGATOR,
        model,
        1,
        new_model_hash=bytes(32),
        new_model_cid="",
        accepted_digest=bytes(32),
        accepted_count=1,
        report_hash=bytes(32),
        report_cid=REPORT_CID,
    )
    rounds = cli.json("model", "rounds", str(model))
    outcomes = [(r["round"], r["state"], r["report_cid"]) for r in rounds]
    assert outcomes == [(1, "FAILED", REPORT_CID)]
    assert REPORT_CID in cli.ok("model", "rounds", str(model)).stdout

    shown = cli.json("trust", "show", first, "scored-2")
    scores = {row["device"]: row for row in shown}
    assert scores[first]["score"] == 6200
    assert scores[second]["score"] == 3100
    assert scores[second]["updates"] == 1

    history = cli.json("trust", "history", "scored-2")
    changes = [(h["model_id"], h["old_score"], h["new_score"]) for h in history]
    assert changes == [(model, 5000, 3100)]
    assert history[0]["reason"] == "ANOMALOUS"
    assert history[0]["aggregator"] == AGGREGATOR.address
    other_model = cli.json(*words(f"trust history scored-2 --model {model + 100}"))
    assert other_model == []
    assert "ANOMALOUS" in cli.ok("trust", "history", "scored-2").stdout


def test_trust_set_readmits_device(deployed_cli: Cli) -> None:
    cli = deployed_cli
    model = cli.json(*words("model create --digits --min-trust 2000"))["model_id"]
    device = enrol_device(cli, "quarantined")
    system = cli.system()
    system.client.transact(
        system.trust.functions.setScores(model, [device], [300], [Reason.ANOMALOUS]),
        AGGREGATOR,
    )
    changed = cli.json(
        *words(f"trust set quarantined 2500 --model {model} --key dev:4")
    )
    assert changed["old_score"] == 300
    assert changed["new_score"] == 2500
    assert cli.json("trust", "show", "quarantined")[0]["score"] == 2500
    history = cli.json("trust", "history", "quarantined")
    assert [h["reason"] for h in history] == ["ANOMALOUS", "OPERATOR_SET"]
    assert history[-1]["aggregator"] == AGGREGATOR.address


def test_trust_set_rejects_non_aggregator(deployed_cli: Cli) -> None:
    cli = deployed_cli
    model = cli.json(*words("model create --digits"))["model_id"]
    enrol_device(cli, "unchanged")
    result = cli(
        "trust", "set", "unchanged", "9000", "--model", str(model), "--key", "dev:5"
    )
    assert_one_line_error(result, 4, "NotModelAggregator")
    assert cli.json("trust", "show", "unchanged")[0]["score"] == 5000


def test_trust_set_rejects_score_out_of_range(deployed_cli: Cli) -> None:
    result = deployed_cli(
        "trust", "set", "x", "10001", "--model", "1", "--key", "dev:4"
    )
    assert_one_line_error(result, 2, "SCORE 10001")


def test_unattested_device_gets_hint(deployed_cli: Cli) -> None:
    cli = deployed_cli
    model = cli.json(*words("model create --digits --rule fedavg"))["model_id"]
    cli.ok("model", "open-round", str(model))
    cli.json("device", "keygen", "unattested")
    cli.ok("device", "enrol", "unattested")
    train = f"update train {model} --key unattested --of 4 --data-shard 0 --epochs 1"
    result = cli(*words(f"{train} --relayer dev:5"))
    assert_one_line_error(
        result, 4, "CredentialExpired", "no attested credential", "ztfm device attest"
    )
