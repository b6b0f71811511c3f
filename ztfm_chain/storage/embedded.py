"""The embedded store: content-addressed objects in a local directory, no daemon.

Layout under the root directory::

    objects/<shard>/<cid>   object bytes; <shard> is the next-to-last two characters
                            of the CID, as in Kubo's flatfs
    pins/<cid>              empty marker file, present while the CID is pinned
    .lock                   flock(2) target: shared for writes, exclusive for gc()

An object is written to a temporary file in its shard directory, flushed with fsync
and renamed into place with os.replace, so the final name never contains a
partial object, even after a crash. A crash can leave a ``.tmp-*`` file behind, and gc()
removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ztfm_chain.exceptions import ConfigError, ContentUnavailable, StorageError
from ztfm_chain.storage.base import DEFAULT_MAX_OBJECT_SIZE, Store
from ztfm_chain.storage.cid import compute_cid, normalize_cid, verify_content

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EmbeddedStore(Store):
    """A content-addressed store in the directory ``root``, created if missing.

    Several processes may share one root: writes take a shared flock(2) on
    ``root/.lock`` and gc() an exclusive one.
    """

    def __init__(
        self,
        root: Path,
        cid_version: int = 1,
        max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
    ) -> None:
        super().__init__(cid_version, max_object_size)
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._pins = self.root / "pins"
        try:
            self._objects.mkdir(parents=True, exist_ok=True)
            self._pins.mkdir(exist_ok=True)
        except (FileExistsError, NotADirectoryError) as err:
            raise ConfigError(
                f"invalid store path {str(self.root)!r}: not a directory ({err})"
            ) from err
        except OSError as err:
            raise StorageError(
                f"failed to create store directory {str(self.root)!r}: {err}"
            ) from err

    def __repr__(self) -> str:
        return (
            f"EmbeddedStore(root={str(self.root)!r}, cid_version={self.cid_version}, "
            f"max_object_size={self.max_object_size})"
        )

    # --- paths and locking -------------------------------------------------------

    def object_path(self, cid: str) -> Path:
        """Return the path of the object file of ``cid``, present or not."""
        normalized = normalize_cid(cid)
        return self._objects / normalized[-3:-1] / normalized

    def _pin_path(self, cid: str) -> Path:
        return self._pins / cid

    @contextlib.contextmanager
    def _lock(self, exclusive: bool) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # --- writes --------------------------------------------------------------------

    def _write_object(self, path: Path, data: bytes) -> None:
        created_shard = not path.parent.is_dir()
        path.parent.mkdir(exist_ok=True)
        if created_shard:
            _fsync_dir(path.parent.parent)
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as temp_file:
                temp_file.write(data)
                temp_file.flush()
                os.fsync(temp_file.fileno())
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise
        _fsync_dir(path.parent)

    def _write_pin(self, cid: str) -> None:
        path = self._pin_path(cid)
        if path.exists():
            return
        # An empty marker has no partial state, so it needs no temporary file.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
        _fsync_dir(self._pins)

    def put(self, data: bytes) -> str:
        """Store and pin ``data``, and return its CID.

        The object is rewritten even if present, which repairs a damaged copy.
        """
        self.check_size(len(data), f"object of {len(data)} bytes")
        cid = compute_cid(data, self.cid_version)
        path = self.object_path(cid)
        try:
            with self._lock(exclusive=False):
                self._write_object(path, data)
                self._write_pin(cid)
        except OSError as err:
            raise StorageError(
                f"failed to write object {cid} to {path}: {err}"
            ) from err
        logger.debug("embedded_put cid=%s size=%s root=%s", cid, len(data), self.root)
        return cid

    def pin(self, cid: str) -> None:
        """Pin ``cid``, or raise ContentUnavailable if the store does not contain it."""
        normalized = normalize_cid(cid)
        try:
            with self._lock(exclusive=False):
                if not self.object_path(normalized).is_file():
                    raise ContentUnavailable(
                        f"cannot pin CID {normalized}: not found in store {self.root}"
                    )
                self._write_pin(normalized)
        except OSError as err:
            raise StorageError(f"failed to pin CID {normalized}: {err}") from err
        logger.debug("embedded_pin cid=%s root=%s", normalized, self.root)

    def unpin(self, cid: str) -> None:
        normalized = normalize_cid(cid)
        try:
            with self._lock(exclusive=False):
                path = self._pin_path(normalized)
                if path.exists():
                    path.unlink()
                    _fsync_dir(self._pins)
        except OSError as err:
            raise StorageError(f"failed to unpin CID {normalized}: {err}") from err
        logger.debug("embedded_unpin cid=%s root=%s", normalized, self.root)

    # --- reads ---------------------------------------------------------------------

    def get(self, cid: str) -> bytes:
        normalized = normalize_cid(cid)
        path = self.object_path(normalized)
        try:
            with path.open("rb") as object_file:
                size = os.fstat(object_file.fileno()).st_size
                self.check_size(size, f"object {normalized} of {size} bytes in {path}")
                data = object_file.read(self.max_object_size + 1)
        except FileNotFoundError as err:
            raise ContentUnavailable(
                f"CID {normalized} not found in store {self.root}"
            ) from err
        except OSError as err:
            raise StorageError(f"failed to read object {path}: {err}") from err
        # The file may have grown between fstat and read.
        self.check_size(len(data), f"object {normalized} in {path}")
        verify_content(data, normalized, source=str(path))
        return data

    def has(self, cid: str) -> bool:
        return self.object_path(cid).is_file()

    def list_pins(self) -> list[str]:
        """Return the pinned CIDs, sorted."""
        return sorted(path.name for path in self._pins.iterdir())

    # --- garbage collection ----------------------------------------------------------

    def gc(self) -> list[str]:
        """Delete unpinned objects and leftover temporary files.

        Returns the CIDs of the deleted objects, sorted. Holds the exclusive lock,
        so no write runs meanwhile and every temporary file found is a leftover.
        """
        removed: list[str] = []
        try:
            with self._lock(exclusive=True):
                for shard in self._objects.iterdir():
                    for path in shard.iterdir():
                        if path.name.startswith(TEMP_PREFIX):
                            logger.warning("embedded_gc_temp_removed path=%s", path)
                            path.unlink()
                        elif not self._pin_path(path.name).exists():
                            path.unlink()
                            removed.append(path.name)
                    _fsync_dir(shard)
        except OSError as err:
            raise StorageError(
                f"garbage collection in {self.root} failed: {err}"
            ) from err
        logger.info("embedded_gc removed=%s root=%s", len(removed), self.root)
        return sorted(removed)
