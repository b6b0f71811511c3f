"""The Store interface that every content-addressed backend implements."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self

from ztfm_chain.exceptions import ObjectTooLarge, UsageError
from ztfm_chain.storage.cid import CidVersion, check_cid_version

# Default limit on one object, in bytes. It bounds the memory that get() uses,
# because objects are returned whole. Raise it per store for larger models.
DEFAULT_MAX_OBJECT_SIZE = 64 * 1024 * 1024


class Store(abc.ABC):
    """A content-addressed object store keyed by IPFS CIDs.

    ``put`` returns the CID that Kubo's ``ipfs add`` computes for the bytes, with
    the store's CID version. ``get`` returns bytes only after checking locally that
    they hash to the CID requested, so a backend never has to be trusted. Objects
    larger than ``max_object_size`` bytes are rejected with ObjectTooLarge on both
    ``put`` and ``get``. Invalid CIDs raise UsageError.
    """

    def __init__(self, cid_version: int, max_object_size: int) -> None:
        self.cid_version: CidVersion = check_cid_version(cid_version)
        if max_object_size <= 0:
            raise UsageError(
                f"invalid max object size {max_object_size!r}: must be positive"
            )
        self.max_object_size = max_object_size

    @abc.abstractmethod
    def put(self, data: bytes) -> str:
        """Store and pin ``data``, and return its CID."""

    @abc.abstractmethod
    def get(self, cid: str) -> bytes:
        """Return the bytes of ``cid``, verified against the CID.

        Raises ContentUnavailable if the store does not have the object,
        ContentMismatch if the stored bytes do not hash to ``cid``, and
        ObjectTooLarge if the object exceeds ``max_object_size``.
        """

    @abc.abstractmethod
    def pin(self, cid: str) -> None:
        """Protect ``cid`` from garbage collection.

        Raises ContentUnavailable if the store cannot obtain the object.
        """

    @abc.abstractmethod
    def unpin(self, cid: str) -> None:
        """Remove the pin on ``cid``, so garbage collection may delete it.

        Unpinning a CID that is not pinned does nothing.
        """

    @abc.abstractmethod
    def has(self, cid: str) -> bool:
        """Return whether the store contains every block of ``cid`` locally."""

    def close(self) -> None:  # noqa: B027 (a no-op default, not an abstract method)
        """Release connections or file handles. The base class has none."""

    def check_size(self, size: int, description: str) -> None:
        """Raise ObjectTooLarge if ``size`` bytes exceed ``max_object_size``."""
        if size > self.max_object_size:
            raise ObjectTooLarge(
                f"{description} is larger than the max object size of "
                f"{self.max_object_size} bytes"
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
