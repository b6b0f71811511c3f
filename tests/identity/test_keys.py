"""Keystore files: round trips, password sources, and failures that leak no secret."""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import stat
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account

from ztfm_chain.exceptions import KeystoreError, UsageError
from ztfm_chain.identity.eip712 import SECP256K1_N
from ztfm_chain.identity.keys import (
    KEYSTORE_MODE,
    MIN_SCRYPT_N,
    SCRYPT_N,
    generate_keystore,
    import_key,
    load_account,
    resolve_password,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# A throwaway key and password: the leak checks search for both in every output.
KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
PASSWORD = "correct horse battery staple"
WRONG_PASSWORD = "Tr0ub4dor&3"


@pytest.fixture(scope="module")
def sample_keystore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A keystore of KEY_HEX under PASSWORD, with the cheapest allowed scrypt cost."""
    path = tmp_path_factory.mktemp("keystores") / "sample.json"
    import_key(path, KEY_HEX, PASSWORD, scrypt_n=MIN_SCRYPT_N)
    return path


def copy_of(sample: Path, directory: Path) -> Path:
    target = directory / "device.json"
    shutil.copyfile(sample, target)
    target.chmod(KEYSTORE_MODE)
    return target


def assert_no_secret(error: BaseException, log_text: str) -> None:
    """Fail when the key or a password shows up in the error or the logs."""
    outputs = [
        str(error),
        repr(error),
        "".join(traceback.format_exception(error)),
        log_text,
    ]
    for text in outputs:
        for secret in (KEY_HEX, KEY_HEX.upper(), PASSWORD, WRONG_PASSWORD):
            assert secret not in text, f"secret found in: {text[:300]}"


# ---------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------


def test_generate_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "device.json"

    address = generate_keystore(path, PASSWORD)
    account = load_account(path, PASSWORD)

    assert account.address == address
    assert stat.S_IMODE(path.stat().st_mode) == KEYSTORE_MODE
    keystore = json.loads(path.read_text())
    assert keystore["version"] == 3
    assert keystore["crypto"]["kdf"] == "scrypt"
    assert keystore["crypto"]["kdfparams"]["n"] == SCRYPT_N
    assert SCRYPT_N >= 2**14
    assert account.key.hex().removeprefix("0x") not in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["device.json"]


def test_import_and_load_round_trip(sample_keystore: Path) -> None:
    account = load_account(sample_keystore, PASSWORD)

    assert account.key.hex().removeprefix("0x") == KEY_HEX
    assert account.address == Account.from_key(bytes.fromhex(KEY_HEX)).address
    assert stat.S_IMODE(sample_keystore.stat().st_mode) == KEYSTORE_MODE
    assert KEY_HEX not in sample_keystore.read_text()


def test_import_accepts_0x_prefix(tmp_path: Path) -> None:
    path = tmp_path / "device.json"

    address = import_key(path, "0x" + KEY_HEX, PASSWORD, scrypt_n=MIN_SCRYPT_N)

    assert address == Account.from_key(bytes.fromhex(KEY_HEX)).address


def test_existing_keystore_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    first = import_key(path, KEY_HEX, PASSWORD, scrypt_n=MIN_SCRYPT_N)
    before = path.read_bytes()

    with pytest.raises(KeystoreError) as caught:
        generate_keystore(path, PASSWORD, scrypt_n=MIN_SCRYPT_N)

    assert str(path) in str(caught.value)
    assert "already exists" in str(caught.value)
    assert path.read_bytes() == before
    assert load_account(path, PASSWORD).address == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.json"]


def test_overwrite_replaces_keystore(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    first = import_key(path, KEY_HEX, PASSWORD, scrypt_n=MIN_SCRYPT_N)

    second = generate_keystore(path, PASSWORD, overwrite=True, scrypt_n=MIN_SCRYPT_N)

    assert second != first
    assert load_account(path, PASSWORD).address == second
    assert stat.S_IMODE(path.stat().st_mode) == KEYSTORE_MODE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.json"]


@pytest.mark.parametrize("scrypt_n", [2**13, 3 * 2**14, 0, -(2**15)])
def test_weak_scrypt_cost_rejected(tmp_path: Path, scrypt_n: int) -> None:
    with pytest.raises(UsageError, match="scrypt_n"):
        generate_keystore(tmp_path / "device.json", PASSWORD, scrypt_n=scrypt_n)

    assert not (tmp_path / "device.json").exists()


def test_empty_password_rejected(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="non-empty"):
        generate_keystore(tmp_path / "device.json", "")


# ---------------------------------------------------------------------------------
# Failures name the path and the problem, and leak nothing
# ---------------------------------------------------------------------------------


def _rewrite(path: Path, change: Callable[[dict[str, object]], None]) -> None:
    keystore = json.loads(path.read_text())
    change(keystore)
    path.write_text(json.dumps(keystore))


def _flip_ciphertext(keystore: dict[str, object]) -> None:
    crypto = keystore["crypto"]
    assert isinstance(crypto, dict)
    text = crypto["ciphertext"]
    crypto["ciphertext"] = ("0" if text[0] != "0" else "1") + text[1:]


def _other_address(keystore: dict[str, object]) -> None:
    keystore["address"] = "11" * 20


def _huge_scrypt_n(keystore: dict[str, object]) -> None:
    crypto = keystore["crypto"]
    assert isinstance(crypto, dict)
    crypto["kdfparams"]["n"] = 2**30


def _version_4(keystore: dict[str, object]) -> None:
    keystore["version"] = 4


def _no_crypto(keystore: dict[str, object]) -> None:
    del keystore["crypto"]


def _replace_with_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _write_text(text: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(text)

    return write


LOAD_FAILURES: list[tuple[str, Callable[[Path], None], str]] = [
    ("missing", Path.unlink, "not found"),
    ("directory", _replace_with_directory, "Is a directory"),
    ("not json", _write_text("{not json"), "not valid JSON"),
    ("not an object", _write_text("[1, 2]"), "not a JSON object"),
    ("version 4", lambda path: _rewrite(path, _version_4), "expected 3"),
    ("no crypto", lambda path: _rewrite(path, _no_crypto), "crypto section"),
    ("ciphertext altered", lambda path: _rewrite(path, _flip_ciphertext), "MAC"),
    ("address altered", lambda path: _rewrite(path, _other_address), "was altered"),
    ("huge scrypt n", lambda path: _rewrite(path, _huge_scrypt_n), "MiB"),
]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [(damage, problem) for _, damage, problem in LOAD_FAILURES],
    ids=[case for case, _, _ in LOAD_FAILURES],
)
def test_load_failure_is_clear_and_secret_free(
    sample_keystore: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], None],
    problem: str,
) -> None:
    path = copy_of(sample_keystore, tmp_path)
    damage(path)
    caplog.set_level(logging.DEBUG)

    started = time.monotonic()
    with pytest.raises(KeystoreError) as caught:
        load_account(path, PASSWORD)

    assert str(path) in str(caught.value)
    assert problem in str(caught.value)
    assert_no_secret(caught.value, caplog.text)
    # No case may reach a key derivation beyond the loader's bounds.
    assert time.monotonic() - started < 10


def test_wrong_password_is_clear_and_secret_free(
    sample_keystore: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    with pytest.raises(KeystoreError) as caught:
        load_account(sample_keystore, WRONG_PASSWORD)

    assert str(sample_keystore) in str(caught.value)
    assert "wrong password" in str(caught.value)
    assert_no_secret(caught.value, caplog.text)


INVALID_KEYS = [
    ("short", KEY_HEX[:-2]),
    ("long", KEY_HEX + "00"),
    ("not hex", "zz" + KEY_HEX[2:]),
    ("zero", "00" * 32),
    ("group order", f"{SECP256K1_N:064x}"),
]


@pytest.mark.parametrize(
    "private_key", [key for _, key in INVALID_KEYS], ids=[c for c, _ in INVALID_KEYS]
)
def test_invalid_private_key_not_echoed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, private_key: str
) -> None:
    caplog.set_level(logging.DEBUG)

    with pytest.raises(UsageError) as caught:
        import_key(tmp_path / "device.json", private_key, PASSWORD)

    assert "private key" in str(caught.value)
    assert private_key not in str(caught.value)
    assert private_key[4:40] not in caplog.text
    assert_no_secret(caught.value, caplog.text)
    assert not (tmp_path / "device.json").exists()


def test_existing_path_error_leaks_nothing(
    sample_keystore: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    with pytest.raises(KeystoreError) as caught:
        import_key(sample_keystore, KEY_HEX, PASSWORD)

    assert "already exists" in str(caught.value)
    assert_no_secret(caught.value, caplog.text)


def test_success_logs_leak_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "device.json"

    address = import_key(path, KEY_HEX, PASSWORD, scrypt_n=MIN_SCRYPT_N)
    load_account(path, PASSWORD)

    assert address in caplog.text
    for secret in (KEY_HEX, PASSWORD):
        assert secret not in caplog.text


def test_readable_keystore_logs_warning(
    sample_keystore: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = copy_of(sample_keystore, tmp_path)
    path.chmod(0o644)
    caplog.set_level(logging.WARNING)

    load_account(path, PASSWORD)

    assert "permissive_mode" in caplog.text
    assert str(path) in caplog.text


# ---------------------------------------------------------------------------------
# Password sources
# ---------------------------------------------------------------------------------


def test_password_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZTFM_TEST_PASSWORD", PASSWORD)

    assert resolve_password(env_var="ZTFM_TEST_PASSWORD") == PASSWORD


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("secret\n", "secret"),
        ("secret\r\n", "secret"),
        ("secret", "secret"),
        ("secret\n\n", "secret\n"),
        (" secret \n", " secret "),
    ],
)
def test_password_from_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "password"
    path.write_bytes(content.encode())

    assert resolve_password(file=path) == expected


PASSWORD_FAILURES = [
    ("no source", {}, "no keystore password source"),
    ("two sources", {"env_var": "HOME", "prompt": True}, "several password sources"),
    ("env unset", {"env_var": "ZTFM_TEST_UNSET_PASSWORD"}, "is not set"),
    ("env empty", {"env_var": "ZTFM_TEST_EMPTY_PASSWORD"}, "is empty"),
]


@pytest.mark.parametrize(
    ("sources", "problem"),
    [(sources, problem) for _, sources, problem in PASSWORD_FAILURES],
    ids=[case for case, _, _ in PASSWORD_FAILURES],
)
def test_password_source_failure_is_clear(
    monkeypatch: pytest.MonkeyPatch, sources: dict[str, object], problem: str
) -> None:
    monkeypatch.delenv("ZTFM_TEST_UNSET_PASSWORD", raising=False)
    monkeypatch.setenv("ZTFM_TEST_EMPTY_PASSWORD", "")

    with pytest.raises(KeystoreError, match=problem) as caught:
        resolve_password(**sources)  # type: ignore[arg-type]

    if "env_var" in sources and "prompt" not in sources:
        assert str(sources["env_var"]) in str(caught.value)


def test_password_file_missing_or_empty(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    empty = tmp_path / "empty"
    empty.write_text("\n")

    with pytest.raises(KeystoreError, match="not found") as caught_missing:
        resolve_password(file=missing)
    with pytest.raises(KeystoreError, match="is empty") as caught_empty:
        resolve_password(file=empty)

    assert str(missing) in str(caught_missing.value)
    assert str(empty) in str(caught_empty.value)


_PROMPT_CHILD = """
import json
import sys
from ztfm_chain.exceptions import KeystoreError
from ztfm_chain.identity.keys import resolve_password
for mode in sys.argv[1:]:
    try:
        result = "password=" + resolve_password(prompt=True, confirm=mode == "confirm")
    except KeystoreError as error:
        result = "KeystoreError: " + str(error)
    print(json.dumps(result), flush=True)
"""

# Each case: whether the prompt requests the password twice, and what the user types.
PROMPT_CASES: dict[str, tuple[bool, list[bytes]]] = {
    "typed": (False, [PASSWORD.encode() + b"\n"]),
    "mismatch": (True, [PASSWORD.encode() + b"\n", WRONG_PASSWORD.encode() + b"\n"]),
    "end of input": (False, [b"\x04"]),
}


@dataclass(frozen=True)
class PromptSession:
    """What getpass returned for each case, and all it wrote to the terminal."""

    results: dict[str, str]
    terminal: bytes


@pytest.fixture(scope="module")
def prompt_session() -> PromptSession:
    """Type replies to getpass on a pseudo-terminal, all cases in one child process.

    The child runs in a new session without a controlling terminal, so getpass uses
    its standard input, the pseudo-terminal, and turns echo off there. One child
    imports eth-account, which is slow to import, once for all cases.
    """
    modes = ["confirm" if confirm else "once" for confirm, _ in PROMPT_CASES.values()]
    master, slave = os.openpty()
    child = subprocess.Popen(
        [sys.executable, "-c", _PROMPT_CHILD, *modes],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=PROJECT_ROOT,
        start_new_session=True,
    )
    os.close(slave)
    terminal = b""
    try:
        for _, replies in PROMPT_CASES.values():
            for reply in replies:
                terminal += _read_until(master, b": ")
                os.write(master, reply)
        output, _ = child.communicate(timeout=60)
        terminal += _drain(master)
    finally:
        os.close(master)
        if child.poll() is None:
            child.kill()
            child.wait()
    lines = [json.loads(line) for line in output.decode().splitlines()]
    assert len(lines) == len(PROMPT_CASES), f"child output: {output!r}"
    return PromptSession(dict(zip(PROMPT_CASES, lines, strict=True)), terminal)


def _read_until(fd: int, marker: bytes, timeout: float = 60) -> bytes:
    """Read from ``fd`` until ``marker`` appears in the bytes read by this call."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no prompt within {timeout} s; got {seen!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            seen += os.read(fd, 1024)
    return seen


def _drain(fd: int) -> bytes:
    data = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not chunk:
            break
        data += chunk
    return data


def test_password_from_prompt(prompt_session: PromptSession) -> None:
    assert prompt_session.results["typed"] == f"password={PASSWORD}"
    assert b"Keystore password: " in prompt_session.terminal


def test_prompt_does_not_echo(prompt_session: PromptSession) -> None:
    assert PASSWORD.encode() not in prompt_session.terminal
    assert WRONG_PASSWORD.encode() not in prompt_session.terminal


def test_prompt_confirmation_mismatch(prompt_session: PromptSession) -> None:
    assert prompt_session.results["mismatch"] == (
        "KeystoreError: the two passwords entered differ; try again"
    )
    assert b"Repeat the password: " in prompt_session.terminal


def test_prompt_end_of_input(prompt_session: PromptSession) -> None:
    assert prompt_session.results["end of input"] == (
        "KeystoreError: no password entered: the input ended"
    )
