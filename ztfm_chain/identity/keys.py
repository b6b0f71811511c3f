"""Device keys kept only in encrypted Web3 Secret Storage (V3 keystore) files.

A key is created or imported straight into a keystore file and read back with its
password. No function here writes or returns a key in plain text. Files are written
atomically with mode 0600, and an existing keystore is never replaced unless the caller
passes ``overwrite=True``.

Errors raise :class:`~ztfm_chain.exceptions.KeystoreError` (or
:class:`~ztfm_chain.exceptions.UsageError` for an invalid argument) with the path and
the problem. No message or log line contains a key, a password or the file's content.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import stat
import string
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_keyfile.exceptions import EthKeyfileValueError
from eth_typing import ChecksumAddress
from eth_utils.address import is_hex_address, to_checksum_address

from ztfm_chain.exceptions import KeystoreError, UsageError
from ztfm_chain.identity.eip712 import SECP256K1_N

log = logging.getLogger(__name__)

#: scrypt cost parameter N of new keystores. eth-account 0.14 fixes r=8 and p=1, so
#: one key derivation needs 128 * N * r bytes: 32 MiB at 2**15. That fits the RAM of
#: small IoT gateways, which decrypt their key at every start, where geth's standard
#: N=2**18 needs 256 MiB. Every password guess costs an attacker as much.
SCRYPT_N = 2**15
#: Smallest N accepted for new keystores (16 MiB per derivation).
MIN_SCRYPT_N = 2**14
#: File mode of keystore files: read and write for the owner only.
KEYSTORE_MODE = 0o600

# Bounds on the KDF settings of a keystore being loaded. A keystore from elsewhere
# chooses its own settings, and without bounds a crafted file makes the loader allocate
# any amount of memory or run for hours. The bounds admit geth's standard keystores
# (scrypt N=2**18, r=8, p=1: 256 MiB) and eth-account's pbkdf2 default (10**6 rounds).
_MAX_SCRYPT_MEMORY = 256 * 2**20
_MAX_SCRYPT_P = 16
_MAX_PBKDF2_ROUNDS = 10_000_000
_KDFS = ("scrypt", "pbkdf2")


def generate_keystore(
    path: Path,
    password: str,
    *,
    overwrite: bool = False,
    scrypt_n: int = SCRYPT_N,
) -> ChecksumAddress:
    """Create a new random key, write it encrypted to ``path`` and return its address.

    Raises :class:`KeystoreError` when ``path`` exists and ``overwrite`` is false, or
    when the file cannot be written.
    """
    _check_password(password)
    _check_scrypt_n(scrypt_n)
    _check_absent(path, overwrite)
    account: LocalAccount = Account.create()
    return _encrypt_and_write(path, account, password, overwrite, scrypt_n)


def import_key(
    path: Path,
    private_key_hex: str,
    password: str,
    *,
    overwrite: bool = False,
    scrypt_n: int = SCRYPT_N,
) -> ChecksumAddress:
    """Write an existing private key encrypted to ``path`` and return its address.

    ``private_key_hex`` is 64 hexadecimal digits, with or without ``0x``. Raises
    :class:`UsageError` for an invalid key (without repeating it) and
    :class:`KeystoreError` as :func:`generate_keystore` does.
    """
    _check_password(password)
    _check_scrypt_n(scrypt_n)
    account: LocalAccount = Account.from_key(_parse_private_key(private_key_hex))
    _check_absent(path, overwrite)
    return _encrypt_and_write(path, account, password, overwrite, scrypt_n)


def load_account(path: Path, password: str) -> LocalAccount:
    """Decrypt the keystore at ``path`` and return its account.

    Raises :class:`KeystoreError` when the file is missing or unreadable, is not a V3
    keystore, has KDF settings beyond this module's bounds, or does not decrypt with
    ``password``.
    """
    keystore = _read_keystore(path)
    try:
        private_key = Account.decrypt(keystore, password)
    except EthKeyfileValueError:
        # The MAC covers the ciphertext, so a changed ciphertext fails the same way.
        raise KeystoreError(
            f"cannot decrypt keystore {path}: wrong password, or the file was altered "
            "(MAC mismatch)"
        ) from None
    except (ValueError, TypeError, KeyError, AssertionError):
        raise KeystoreError(
            f"cannot decrypt keystore {path}: its crypto section is malformed"
        ) from None
    try:
        account: LocalAccount = Account.from_key(private_key)
    except ValueError:
        raise KeystoreError(
            f"keystore {path} decrypts to an invalid secp256k1 private key; the file "
            "is corrupt"
        ) from None
    recorded = keystore.get("address")
    if recorded is not None and to_checksum_address(recorded) != account.address:
        raise KeystoreError(
            f"keystore {path} records address {to_checksum_address(recorded)} but its "
            f"key belongs to {account.address}; the file was altered"
        )
    _warn_if_readable_by_others(path, "keystore")
    log.info("keystore.loaded path=%s address=%s", path, account.address)
    return account


def resolve_password(
    *,
    env_var: str | None = None,
    file: Path | None = None,
    prompt: bool = False,
    prompt_text: str = "Keystore password: ",
    confirm: bool = False,
) -> str:
    """Read a keystore password from exactly one source.

    The sources are the environment variable ``env_var``, the file ``file`` (one
    trailing newline removed) and, with ``prompt``, the terminal without echo. With
    ``confirm``, the prompt requests the password twice, for a new keystore. Raises
    :class:`KeystoreError` when no source or several are given, the source is missing
    or the password is empty.
    """
    sources = [
        name
        for name, chosen in (
            ("an environment variable", env_var is not None),
            ("a password file", file is not None),
            ("the prompt", prompt),
        )
        if chosen
    ]
    if not sources:
        raise KeystoreError(
            "no keystore password source given; set an environment variable, a "
            "password file or the interactive prompt"
        )
    if len(sources) > 1:
        raise KeystoreError(
            f"several password sources given ({', '.join(sources)}); choose one"
        )
    if env_var is not None:
        return _password_from_env(env_var)
    if file is not None:
        return _password_from_file(file)
    return _password_from_prompt(prompt_text, confirm)


# ---------------------------------------------------------------------------------
# Password sources
# ---------------------------------------------------------------------------------


def _password_from_env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise KeystoreError(
            f"environment variable {name} is not set; export the keystore password in "
            "it or choose another password source"
        )
    if not value:
        raise KeystoreError(f"environment variable {name} is empty")
    return value


def _password_from_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeystoreError(f"password file {path} not found") from None
    except UnicodeDecodeError:
        raise KeystoreError(f"password file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise KeystoreError(
            f"cannot read password file {path}: {exc.strerror}"
        ) from None
    _warn_if_readable_by_others(path, "password file")
    # Remove one line ending only, because other whitespace may belong to the password.
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise KeystoreError(f"password file {path} is empty")
    return text


def _password_from_prompt(prompt_text: str, confirm: bool) -> str:
    try:
        password = getpass.getpass(prompt_text)
        if confirm and getpass.getpass("Repeat the password: ") != password:
            raise KeystoreError("the two passwords entered differ; try again")
    except EOFError:
        raise KeystoreError("no password entered: the input ended") from None
    if not password:
        raise KeystoreError("the password entered is empty")
    return password


# ---------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------


def _encrypt_and_write(
    path: Path,
    account: LocalAccount,
    password: str,
    overwrite: bool,
    scrypt_n: int,
) -> ChecksumAddress:
    keystore = Account.encrypt(account.key, password, kdf="scrypt", iterations=scrypt_n)
    _write_atomically(path, json.dumps(keystore) + "\n", overwrite)
    log.info(
        "keystore.written path=%s address=%s scrypt_n=%s",
        path,
        account.address,
        scrypt_n,
    )
    return account.address


def _write_atomically(path: Path, text: str, overwrite: bool) -> None:
    """Write ``text`` to a 0600 temporary file, fsync it and move it to ``path``.

    Without ``overwrite`` the move is a hard link, which fails when ``path`` exists,
    so two writers cannot both succeed.
    """
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(
            dir=directory, prefix=f".{path.name}.", suffix=".tmp"
        )
    except OSError as exc:
        raise KeystoreError(
            f"cannot create keystore {path}: {exc.strerror} in directory {directory}"
        ) from None
    try:
        os.fchmod(fd, KEYSTORE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            # NOTE: a file system without hard links (FAT, some network mounts)
            # fails here; pass overwrite=True there after checking the path yourself.
            os.link(temporary, path)
            os.unlink(temporary)
        _fsync_directory(directory)
    except FileExistsError:
        raise KeystoreError(_exists_message(path)) from None
    except OSError as exc:
        raise KeystoreError(f"cannot write keystore {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _fsync_directory(directory: Path) -> None:
    # Makes the new directory entry durable, so the file survives a power loss.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_absent(path: Path, overwrite: bool) -> None:
    # This check runs before the slow key derivation. _write_atomically checks again.
    if not overwrite and (path.exists() or path.is_symlink()):
        raise KeystoreError(_exists_message(path))


def _exists_message(path: Path) -> str:
    return (
        f"keystore {path} already exists; choose another path or pass overwrite=True "
        "to replace it (the key in it is then lost unless backed up)"
    )


# ---------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------


def _read_keystore(path: Path) -> dict[str, Any]:
    """Read and check a V3 keystore, with its keys lower-cased as eth-keyfile does."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeystoreError(
            f"keystore {path} not found; create one with `ztfm device keygen NAME` "
            "(generate_keystore or import_key in Python)"
        ) from None
    except UnicodeDecodeError:
        raise KeystoreError(f"keystore {path} is not UTF-8 text") from None
    except OSError as exc:
        raise KeystoreError(f"cannot read keystore {path}: {exc.strerror}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeystoreError(
            f"keystore {path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}"
        ) from None
    if not isinstance(document, dict):
        raise KeystoreError(f"keystore {path} is not a JSON object")
    keystore = _lower_keys(document)
    problem = _v3_problem(keystore)
    if problem is not None:
        raise KeystoreError(f"keystore {path} is not a valid V3 keystore: {problem}")
    return keystore


def _lower_keys(document: Mapping[str, Any]) -> dict[str, Any]:
    return {
        str(key).lower(): _lower_keys(value) if isinstance(value, dict) else value
        for key, value in document.items()
    }


def _v3_problem(keystore: dict[str, Any]) -> str | None:
    """Describe what makes ``keystore`` unusable, or return None when it is usable."""
    if keystore.get("version") != 3:
        return f"version is {keystore.get('version')!r}, expected 3"
    address = keystore.get("address")
    if address is not None and not (
        isinstance(address, str) and is_hex_address(address)
    ):
        return "the address field is not a 20-byte hex address"
    crypto = keystore.get("crypto")
    if not isinstance(crypto, dict):
        return "the crypto section is missing"
    if crypto.get("cipher") != "aes-128-ctr":
        return f"cipher is {crypto.get('cipher')!r}, expected 'aes-128-ctr'"
    for field in ("ciphertext", "mac"):
        if not _is_hex(crypto.get(field)):
            return f"crypto.{field} is missing or not hexadecimal"
    cipherparams = crypto.get("cipherparams")
    if not isinstance(cipherparams, dict) or not _is_hex(cipherparams.get("iv")):
        return "crypto.cipherparams.iv is missing or not hexadecimal"
    return _kdf_problem(crypto.get("kdf"), crypto.get("kdfparams"))


def _kdf_problem(kdf: object, params: object) -> str | None:
    if kdf not in _KDFS:
        return f"kdf is {kdf!r}, expected one of {', '.join(_KDFS)}"
    if not isinstance(params, dict):
        return "crypto.kdfparams is missing"
    if params.get("dklen") != 32 or not _is_hex(params.get("salt")):
        return "crypto.kdfparams needs dklen 32 and a hexadecimal salt"
    if kdf == "pbkdf2":
        rounds = params.get("c")
        if not _is_int(rounds) or not 1 <= rounds <= _MAX_PBKDF2_ROUNDS:
            return f"pbkdf2 rounds c={rounds!r} outside 1..{_MAX_PBKDF2_ROUNDS}"
        if params.get("prf") != "hmac-sha256":
            return f"pbkdf2 prf is {params.get('prf')!r}, expected 'hmac-sha256'"
        return None
    n, r, p = params.get("n"), params.get("r"), params.get("p")
    if not (_is_int(n) and _is_int(r) and _is_int(p)):
        return "scrypt parameters n, r and p must be integers"
    if n < 2 or n & (n - 1) or r < 1 or not 1 <= p <= _MAX_SCRYPT_P:
        return f"scrypt parameters n={n}, r={r}, p={p} are invalid"
    if 128 * n * r > _MAX_SCRYPT_MEMORY:
        return (
            f"scrypt parameters n={n}, r={r} need {128 * n * r // 2**20} MiB, more "
            f"than the {_MAX_SCRYPT_MEMORY // 2**20} MiB this loader allows"
        )
    return None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hex(value: object) -> bool:
    if not isinstance(value, str):
        return False
    digits = value[2:] if value.startswith(("0x", "0X")) else value
    return len(digits) > 0 and len(digits) % 2 == 0 and _all_hex(digits)


def _all_hex(text: str) -> bool:
    return all(character in string.hexdigits for character in text)


# ---------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------


def _check_password(password: str) -> None:
    if not isinstance(password, str) or not password:
        raise UsageError("the keystore password must be a non-empty string")


def _check_scrypt_n(scrypt_n: int) -> None:
    if not _is_int(scrypt_n) or scrypt_n < MIN_SCRYPT_N or scrypt_n & (scrypt_n - 1):
        raise UsageError(
            f"scrypt_n must be a power of two of at least {MIN_SCRYPT_N}, got "
            f"{scrypt_n!r}"
        )


def _parse_private_key(value: str) -> bytes:
    """Return the 32 key bytes of ``value``; errors never repeat the value."""
    if not isinstance(value, str):
        raise UsageError("the private key must be a hexadecimal string")
    digits = value.strip()
    if digits.startswith(("0x", "0X")):
        digits = digits[2:]
    if len(digits) != 64 or not _all_hex(digits):
        raise UsageError(
            "the private key must be 64 hexadecimal digits (32 bytes), with or "
            "without 0x; the value given is not shown"
        )
    key = bytes.fromhex(digits)
    if not 0 < int.from_bytes(key, "big") < SECP256K1_N:
        raise UsageError(
            "the private key is outside the secp256k1 range 1..n-1; the value given "
            "is not shown"
        )
    return key


def _warn_if_readable_by_others(path: Path, what: str) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        log.warning(
            "keys.permissive_mode %s=%s mode=%03o; run chmod 600 on it",
            what.replace(" ", "_"),
            path,
            mode,
        )
