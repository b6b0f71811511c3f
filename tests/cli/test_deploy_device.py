"""``ztfm deploy`` and ``ztfm device``, driven as a user would on the session chain."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ztfm_chain.cli.common import dev_account
from ztfm_chain.identity.keys import load_account

from .conftest import CLEARED_ENV, MEASUREMENT, ZTFM, Cli, assert_one_line_error


def test_deploy_saves_manifest(cli: Cli) -> None:
    result = cli.ok("deploy")
    assert "development keys" in result.stderr
    assert f"chain: {cli.rpc_url} (from --rpc-url)" in result.stderr
    manifest = cli.home / "deployments" / "31337.json"
    assert f"manifest saved to {manifest}" in result.stdout
    saved = json.loads(manifest.read_text())
    assert saved["device_registry"] in result.stdout
    assert saved["roles"]["REGISTRAR_ROLE"] == [dev_account(1).address]
    assert saved["roles"]["AGGREGATOR_ROLE"] == [dev_account(4).address]


def test_deploy_json_and_force(cli: Cli) -> None:
    first = cli.json("deploy", "--aggregator", "dev:4", "--aggregator", "dev:7")
    assert first["roles"]["AGGREGATOR_ROLE"] == [
        dev_account(4).address,
        dev_account(7).address,
    ]
    assert_one_line_error(cli("deploy"), 2, "--force")
    second = cli.json("deploy", "--force")
    assert second["contracts"]["DeviceRegistry"] != first["contracts"]["DeviceRegistry"]


def test_deploy_rejects_bad_roles(cli: Cli) -> None:
    shared = cli("deploy", "--registrar", "dev:0")
    assert_one_line_error(shared, 2, "--registrar", dev_account(0).address, "--admin")
    trust = cli("deploy", "--initial-trust", "20000")
    assert_one_line_error(trust, 2, "--initial-trust 20000")
    address = cli("deploy", "--attestor", "0x1234")
    assert_one_line_error(address, 2, "'0x1234'")
    assert not (cli.home / "deployments").exists()


def test_keygen_writes_keystore(deployed_cli: Cli) -> None:
    key = deployed_cli.json("device", "keygen", "keygen-1")
    path = deployed_cli.home / "keys" / "keygen-1.json"
    assert key["keystore"] == str(path)
    assert key["did"] == f"did:ethr:0x7a69:{key['address']}"
    assert json.loads(path.read_text())["address"].lower() == key["address"][2:].lower()
    exists = deployed_cli("device", "keygen", "keygen-1")
    assert_one_line_error(exists, 2, "already exists")
    bad = deployed_cli("device", "keygen", "../escape")
    assert_one_line_error(bad, 2, "'../escape'")


def test_keygen_password_file(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home", None)
    password_file = tmp_path / "password.txt"
    password_file.write_text("from a file\n")
    no_env = {"ZTFM_PASSWORD": None}
    key = cli(
        "--json",
        "device",
        "keygen",
        "filed",
        "--password-file",
        str(password_file),
        env=no_env,
    )
    assert key.exit_code == 0, key.stderr
    assert json.loads(key.stdout)["did"] is None
    keystore = cli.home / "keys" / "filed.json"
    assert (
        load_account(keystore, "from a file").address
        == json.loads(key.stdout)["address"]
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = cli("device", "keygen", "other", "--password-file", str(empty), env=no_env)
    assert_one_line_error(result, 2, str(empty))


def test_keygen_prompt_confirms_password(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if key not in CLEARED_ENV}
    env["ZTFM_HOME"] = str(home)
    # A new session has no controlling terminal, so getpass reads standard input.
    result = subprocess.run(
        [str(ZTFM), "device", "keygen", "prompted"],
        input="pw-one\npw-two\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "error: the two passwords entered differ" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (home / "keys" / "prompted.json").exists()


def test_device_lifecycle(deployed_cli: Cli) -> None:
    cli = deployed_cli
    address = cli.json("device", "keygen", "life-1")["address"]
    enrolled = cli.json("device", "enrol", "life-1", "--segment", "7", "--roles", "3")
    assert enrolled["status"] == "ACTIVE"
    assert enrolled["segment"] == 7
    assert enrolled["roles"] == 3
    assert enrolled["credential_valid"] is False

    attested = cli.json(
        "device", "attest", address, "--measurement", MEASUREMENT, "--lifetime", "600"
    )
    assert attested["credential_valid"] is True
    assert attested["measurement"] == "0x" + MEASUREMENT
    assert attested["credential_expires_at"] - attested["attested_at"] == 600

    assert cli.json("device", "suspend", "life-1")["status"] == "SUSPENDED"
    twice = cli("device", "suspend", "life-1")
    assert_one_line_error(twice, 2, "SUSPENDED", address)
    assert cli.json("device", "reinstate", "life-1")["status"] == "ACTIVE"

    shown = cli.json("device", "show", f"did:ethr:0x7a69:{address}")
    assert shown["device"] == address
    assert shown["key"] == address
    assert shown["trust_score"] == 5000

    listed = {row["device"]: row for row in cli.json("device", "list")}
    assert listed[address]["status"] == "ACTIVE"
    assert listed[address]["segment"] == 7

    human = cli.ok("device", "list", "--page-size", "1")
    assert address in human.stdout
    assert f"keys: {cli.home / 'keys'}" in human.stderr


def test_rotate_key_keeps_did(deployed_cli: Cli) -> None:
    cli = deployed_cli
    address = cli.json("device", "keygen", "rotate-old")["address"]
    new_address = cli.json("device", "keygen", "rotate-new")["address"]
    cli.ok("device", "enrol", "rotate-old")
    same = cli(
        "device",
        "rotate-key",
        address,
        "--old-key",
        "rotate-old",
        "--new-key",
        "rotate-old",
    )
    assert_one_line_error(same, 2, "'rotate-old'")
    not_current = cli(
        *f"device rotate-key {address} --old-key rotate-new --new-key rotate-old".split()
    )
    assert_one_line_error(not_current, 2, new_address, "current key")
    rotated = cli.json(
        "device",
        "rotate-key",
        address,
        "--old-key",
        "rotate-old",
        "--new-key",
        "rotate-new",
    )
    assert rotated["device"] == address
    assert rotated["key"] == new_address
    document = cli.json("device", "show", address, "--did-document")
    assert document["id"] == f"did:ethr:0x7a69:{address}"
    controller = document["verificationMethod"][0]["blockchainAccountId"]
    assert controller == f"eip155:31337:{new_address}"


def test_revoke_asks_unless_yes(deployed_cli: Cli) -> None:
    cli = deployed_cli
    address = cli.json("device", "keygen", "revoke-1")["address"]
    cli.ok("device", "enrol", "revoke-1")
    declined = cli("device", "revoke", "revoke-1", input="n\n")
    assert declined.exit_code == 1
    assert cli.json("device", "show", address)["status"] == "ACTIVE"
    assert cli.json("device", "revoke", "revoke-1", "--yes")["status"] == "REVOKED"
    final = cli("device", "reinstate", "revoke-1")
    assert_one_line_error(final, 2, "REVOKED")


def test_device_bad_arguments_exit_2(deployed_cli: Cli) -> None:
    deployed_cli.ok("device", "keygen", "bad-args-enrolled")
    deployed_cli.ok("device", "enrol", "bad-args-enrolled")
    cases = [
        (["device", "show", "no-such-key"], "'no-such-key'"),
        (["device", "show", "0xabc"], "'0xabc'"),
        (["device", "show", "did:ethr:0x1:0x" + "11" * 20], "chain id 1"),
        (["device", "attest", "0x" + "11" * 20, "--measurement", "12"], "'12'"),
        (
            [
                "device",
                "attest",
                "0x" + "11" * 20,
                "--measurement",
                MEASUREMENT,
                "--lifetime",
                "0",
            ],
            "--lifetime 0",
        ),
        (["device", "enrol", "x", "--segment", "-1"], "--segment -1"),
        (["device", "enrol", "x", "--metadata-cid", "not-a-cid"], "'not-a-cid'"),
        (["device", "enrol", "missing-key"], "missing-key"),
        (["device", "enrol", "bad-args-enrolled"], "already enrolled"),
        (
            ["device", "attest", "0x" + "11" * 20, "--measurement", MEASUREMENT],
            "not enrolled",
        ),
    ]
    for args, fragment in cases:
        assert_one_line_error(deployed_cli(*args), 2, fragment)
    quiet = deployed_cli("--json", "device", "show", "no-such-key")
    assert quiet.stderr.count("\n") == 1
