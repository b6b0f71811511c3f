"""Exceptions raised by ztfm_chain.

Every exception derives from :class:`ZtfmError`. Misuse of the API (a bad argument or
setting) raises a :class:`UsageError`, which is also a ``ValueError``; a failure of
something outside the caller's control (the chain, the storage node, received bytes)
raises an :class:`OperationalError`.

    ZtfmError
    ├── UsageError (ValueError)
    │   ├── ConfigError                 a setting is missing or invalid
    │   └── KeystoreError               a keystore cannot be read or decrypted
    └── OperationalError
        ├── ChainError
        │   ├── ChainUnavailable        the JSON-RPC endpoint does not answer
        │   ├── ChainMismatch           wrong chain id, or no code at a manifest address
        │   ├── TransactionTimeout      no receipt within the timeout
        │   ├── TransactionReverted     reverted without a known custom error
        │   └── ContractError           a contract's custom error, one subclass per error
        ├── StorageError
        │   ├── ContentUnavailable      the node does not have or does not serve the CID
        │   ├── ContentMismatch         the bytes served do not hash to the CID requested
        │   └── ObjectTooLarge          the object exceeds the store's size limit
        ├── UpdateError                 received model-update bytes are not acceptable
        │   ├── UpdateTooLarge
        │   ├── MalformedUpdate
        │   ├── SchemaMismatch
        │   ├── NonFiniteValues
        │   └── BadSampleCount
        └── SignatureError              a signature is malformed, high-s or by another key

The contract errors are generated from the compiled ABIs; see
:mod:`ztfm_chain.chain.errors`.
"""

from __future__ import annotations


class ZtfmError(Exception):
    """Root of every exception that ztfm_chain raises."""


class UsageError(ZtfmError, ValueError):
    """An argument or setting given by the caller is invalid."""


class ConfigError(UsageError):
    """A setting is missing or invalid."""


class KeystoreError(UsageError):
    """A keystore file cannot be read, or its password does not decrypt it."""


class OperationalError(ZtfmError):
    """Something outside the caller's control failed."""


# --- chain -----------------------------------------------------------------------


class ChainError(OperationalError):
    """The chain, or a transaction on it, failed."""


class ChainUnavailable(ChainError):
    """The JSON-RPC endpoint does not answer."""


class ChainMismatch(ChainError):
    """The chain is not the one the deployment manifest describes."""


class TransactionTimeout(ChainError):
    """A transaction was sent but no receipt arrived in time."""


class TransactionReverted(ChainError):
    """A transaction or call reverted without a custom error this package knows."""


class ContractError(ChainError):
    """A contract reverted with a custom error; subclasses carry its arguments."""

    error_name: str = ""
    contract_name: str = ""

    def __init__(self, message: str, args: dict[str, object]) -> None:
        super().__init__(message)
        self.arguments = args


# --- storage ---------------------------------------------------------------------


class StorageError(OperationalError):
    """The content store failed."""


class ContentUnavailable(StorageError):
    """The store does not have, or did not serve, the requested CID."""


class ContentMismatch(StorageError):
    """The bytes served do not match the CID or content hash they were asked for."""


class ObjectTooLarge(StorageError):
    """The object exceeds the store's size limit."""


# --- model updates ---------------------------------------------------------------


class UpdateError(OperationalError):
    """Model-update bytes received from elsewhere are not acceptable."""

    reason: str = "MALFORMED"


class UpdateTooLarge(UpdateError):
    """The encoded update exceeds the size limit."""

    reason = "TOO_LARGE"


class MalformedUpdate(UpdateError):
    """The bytes are not a valid safetensors file with the expected metadata."""

    reason = "MALFORMED"


class SchemaMismatch(UpdateError):
    """Tensor names, shapes or dtypes differ from the model's schema."""

    reason = "SCHEMA_MISMATCH"


class NonFiniteValues(UpdateError):
    """A tensor contains NaN or infinity."""

    reason = "NON_FINITE"


class BadSampleCount(UpdateError):
    """The sample count is not positive or exceeds the model's bound."""

    reason = "BAD_SAMPLE_COUNT"


# --- signatures ------------------------------------------------------------------


class SignatureError(OperationalError):
    """A signature is malformed, not low-s, or not by the expected key."""
