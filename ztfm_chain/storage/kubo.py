"""A store backed by an IPFS node over the Kubo RPC API (``/api/v0``).

The node is never trusted: ``put`` compares the CID that the node returns with the
one computed locally, and ``get`` hashes the bytes received and compares the result
with the CID requested. js-ipfs 0.66 serves the same API, and the tests run
against it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import ipfshttpclient
import requests
import urllib3.exceptions
from ipfshttpclient import exceptions as ipfs_errors
from ipfshttpclient.http_common import multiaddr_to_url_data

from ztfm_chain.exceptions import (
    ConfigError,
    ContentMismatch,
    ContentUnavailable,
    StorageError,
)
from ztfm_chain.storage.base import DEFAULT_MAX_OBJECT_SIZE, Store
from ztfm_chain.storage.cid import (
    ContentVerifier,
    compute_cid,
    normalize_cid,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_KUBO_API = "/ip4/127.0.0.1/tcp/5001/http"

# Errors after which no response arrived, so the request can be sent again.
_CONNECTION_ERRORS = (ipfs_errors.ConnectionError, ipfs_errors.ProtocolError)
#: Bytes per raw read of a cat response.
_READ_SIZE = 1 << 16
#: Bytes read of an error response, for its message.
_ERROR_BODY_LIMIT = 1 << 16


def _root_cause(err: BaseException) -> str:
    """Describe the innermost exception that ``err`` was raised from.

    A refused connection surfaces through ipfshttpclient, requests and urllib3
    wrappers, and only the innermost one (``ConnectionRefusedError``) is short.
    """
    current = err
    seen = {id(current)}
    while True:
        inner = current.__cause__ or current.__context__
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        current = inner
    return f"{type(current).__name__}: {current}"


class _RetriesExhaustedError(Exception):
    def __init__(self, attempts: int, last_error: Exception) -> None:
        super().__init__(
            f"failed after {attempts} attempts ({_root_cause(last_error)}). "
            "Check that the node is running at this address"
        )
        self.last_error = last_error


def to_multiaddr(api_addr: str) -> str:
    """Convert an ``http://host:port`` URL to a multiaddr; return a multiaddr as is.

    Raises ConfigError for anything else, or for a URL with a path.
    """
    if api_addr.startswith("/"):
        return api_addr
    url = urllib.parse.urlsplit(api_addr)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(
            f"invalid Kubo API address {api_addr!r}: "
            "expected a multiaddr such as /ip4/127.0.0.1/tcp/5001/http "
            "or a URL such as http://127.0.0.1:5001"
        )
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ConfigError(
            f"invalid Kubo API URL {api_addr!r}: give only scheme, host and port, "
            "the /api/v0 path is added"
        )
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError as err:
        raise ConfigError(f"invalid Kubo API URL {api_addr!r}: {err}") from err
    try:
        host = ipaddress.ip_address(url.hostname)
        host_part = f"/ip{host.version}/{host}"
    except ValueError:
        host_part = f"/dns/{url.hostname}"
    return f"{host_part}/tcp/{port}/{url.scheme}"


def _is_timeout(err: BaseException) -> bool:
    """Return whether ``err`` or an exception it wraps is a read or connect timeout."""
    pending: list[object] = [err]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(
            current,
            TimeoutError | urllib3.exceptions.TimeoutError | ipfs_errors.TimeoutError,
        ):
            return True
        pending.extend(current.args)
        pending.extend([current.__cause__, current.__context__])
    return False


class KuboStore(Store):
    """A store that keeps objects on an IPFS node, reached over its RPC API.

    ``timeout`` is the time in seconds to wait for the node between two reads of a
    response. ``transfer_timeout`` limits a whole ``get``: a node that keeps
    sending a few bytes at a time is cut off once a read ends past it, so a
    ``get`` lasts at most ``transfer_timeout + timeout`` seconds. Requests
    that fail to connect, or lose the connection, are sent again up to ``retries``
    times, waiting ``backoff``, then twice that, and so on. Re-sending a ``put``
    is safe because the CID depends only on the bytes: a second add of the same
    bytes stores nothing new and pins the same CID. Timeouts are not retried.

    ``has_timeout`` bounds, in seconds, how long the node may look for a block in
    ``has``. Kubo returns at once because ``has`` requests offline mode, but a
    js-ipfs node in offline mode waits for a missing block until this limit.
    """

    def __init__(
        self,
        api_addr: str = DEFAULT_KUBO_API,
        cid_version: int = 1,
        max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        has_timeout: float = 2.0,
        transfer_timeout: float = 300.0,
    ) -> None:
        super().__init__(cid_version, max_object_size)
        if timeout <= 0 or has_timeout <= 0 or transfer_timeout <= 0:
            raise ConfigError(
                f"invalid Kubo timeouts {timeout!r}, {has_timeout!r}, "
                f"{transfer_timeout!r}: must be positive"
            )
        if retries < 0 or backoff < 0:
            raise ConfigError(
                f"invalid Kubo retries {retries!r} or backoff {backoff!r}: "
                "must not be negative"
            )
        self.api_addr = to_multiaddr(api_addr)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.has_timeout = has_timeout
        self.transfer_timeout = transfer_timeout
        # Client() rather than ipfshttpclient.connect(), because connect() in
        # ipfshttpclient 0.7.0 rejects every daemon of version 0.8.0 or newer.
        try:
            self._client = ipfshttpclient.Client(self.api_addr, timeout=timeout)
            api_url, uds_path, _, _ = multiaddr_to_url_data(self.api_addr, "api/v0")
        except ipfs_errors.AddressError as err:
            raise ConfigError(
                f"invalid Kubo API multiaddr {api_addr!r}: {err}. Expected one "
                "such as /ip4/127.0.0.1/tcp/5001/http"
            ) from err
        # cat goes through requests directly, to see the response's headers and to
        # read raw bytes as they arrive; see _read_verified.
        self._cat_url = api_url.rstrip("/") + "/cat" if uds_path is None else None
        self._session = requests.Session()

    def __repr__(self) -> str:
        return (
            f"KuboStore(api_addr={self.api_addr!r}, cid_version={self.cid_version}, "
            f"max_object_size={self.max_object_size})"
        )

    def close(self) -> None:
        self._client.close()
        self._session.close()

    def _call(self, operation: str, cid: str, request: Callable[[], T]) -> T:
        """Run ``request``, sending it again after connection errors."""
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return request()
            except _CONNECTION_ERRORS as err:
                if attempt == attempts:
                    logger.error(
                        "kubo_request_failed operation=%s cid=%s api=%s attempts=%s "
                        "error=%s",
                        operation,
                        cid,
                        self.api_addr,
                        attempts,
                        _root_cause(err),
                    )
                    raise _RetriesExhaustedError(attempts, err) from err
                delay = self.backoff * 2 ** (attempt - 1)
                logger.warning(
                    "kubo_retry operation=%s cid=%s api=%s attempt=%s delay=%s "
                    "error=%s",
                    operation,
                    cid,
                    self.api_addr,
                    attempt,
                    delay,
                    _root_cause(err),
                )
                time.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    # --- writes --------------------------------------------------------------------

    def _add_options(self) -> dict[str, str]:
        # Every option is explicit, because Kubo's Import.* settings can change
        # the defaults of a node.
        options = {
            "cid-version": str(self.cid_version),
            "raw-leaves": "true" if self.cid_version == 1 else "false",
            "chunker": "size-262144",
            "hash": "sha2-256",
            "trickle": "false",
            "pin": "true",
        }
        if self.cid_version == 1:
            # js-ipfs prints a CIDv1 in base58btc unless asked for base32.
            options["cid-base"] = "base32"
        return options

    def put(self, data: bytes) -> str:
        """Add and pin ``data`` on the node, and return its CID.

        Raises ContentMismatch if the node returns another CID than the one
        computed locally, for example because it builds DAGs with other settings.
        """
        self.check_size(len(data), f"object of {len(data)} bytes")
        expected = compute_cid(data, self.cid_version)
        options = self._add_options()

        def add() -> Any:
            return self._client.add_bytes(data, opts=options)

        try:
            returned = self._call("add", expected, add)
        except _RetriesExhaustedError as err:
            raise StorageError(
                f"failed to add object {expected} to Kubo API {self.api_addr}: {err}"
            ) from err
        except ipfs_errors.Error as err:
            raise StorageError(
                f"failed to add object {expected} to Kubo API {self.api_addr}: {err}"
            ) from err
        try:
            returned_cid = normalize_cid(str(returned))
        except ValueError as err:
            raise StorageError(
                f"Kubo API {self.api_addr} returned an invalid CID {returned!r} "
                f"for object {expected}"
            ) from err
        if returned_cid != expected:
            raise ContentMismatch(
                f"Kubo API {self.api_addr} stored the object as CID {returned_cid}, "
                f"but its bytes hash to {expected}: the node builds DAGs with "
                "other settings"
            )
        logger.debug(
            "kubo_put cid=%s size=%s api=%s", expected, len(data), self.api_addr
        )
        return expected

    def pin(self, cid: str) -> None:
        """Pin ``cid`` on the node, which fetches the object if it lacks it."""
        normalized = normalize_cid(cid)

        def pin_add() -> Any:
            return self._client.pin.add(normalized)

        self._run_or_unavailable("pin", normalized, pin_add)
        logger.debug("kubo_pin cid=%s api=%s", normalized, self.api_addr)

    def unpin(self, cid: str) -> None:
        normalized = normalize_cid(cid)

        def pin_rm() -> Any:
            return self._client.pin.rm(normalized)

        try:
            self._call("unpin", normalized, pin_rm)
        except ipfs_errors.ErrorResponse as err:
            # Both Kubo and js-ipfs return an error containing "not pinned" here.
            if "not pinned" in str(err):
                logger.debug("kubo_unpin_not_pinned cid=%s", normalized)
                return
            raise StorageError(
                f"failed to unpin CID {normalized} on Kubo API {self.api_addr}: {err}"
            ) from err
        except (_RetriesExhaustedError, ipfs_errors.Error) as err:
            raise StorageError(
                f"failed to unpin CID {normalized} on Kubo API {self.api_addr}: {err}"
            ) from err
        logger.debug("kubo_unpin cid=%s api=%s", normalized, self.api_addr)

    def _run_or_unavailable(
        self, operation: str, cid: str, request: Callable[[], T]
    ) -> T:
        try:
            return self._call(operation, cid, request)
        except ipfs_errors.TimeoutError as err:
            raise ContentUnavailable(
                f"{operation} of CID {cid} timed out after {self.timeout} s "
                f"on Kubo API {self.api_addr}"
            ) from err
        except ipfs_errors.ErrorResponse as err:
            raise ContentUnavailable(
                f"{operation} of CID {cid} failed on Kubo API {self.api_addr}: {err}"
            ) from err
        except _RetriesExhaustedError as err:
            raise ContentUnavailable(
                f"{operation} of CID {cid} failed, Kubo API {self.api_addr} "
                f"is unreachable: {err}"
            ) from err
        except ipfs_errors.Error as err:
            raise StorageError(
                f"{operation} of CID {cid} failed on Kubo API {self.api_addr}: {err}"
            ) from err

    # --- reads ---------------------------------------------------------------------

    def _read_verified(self, cid: str) -> bytes:
        if self._cat_url is None:
            return self._read_verified_unix(cid)
        verifier = ContentVerifier(cid)
        chunks: list[bytes] = []
        source = f"Kubo API {self.api_addr}"
        deadline = time.monotonic() + self.transfer_timeout
        try:
            # The node sends at most max_object_size + 1 bytes, enough to detect an
            # object that is too large, and a node that ignores the limit is cut off
            # at the same point. Compressed bodies are refused, because their size
            # on the wire does not bound the decompressed one.
            response = self._session.post(
                self._cat_url,
                params={"arg": cid, "length": str(self.max_object_size + 1)},
                headers={"Accept-Encoding": "identity"},
                stream=True,
                timeout=self.timeout,
            )
        except requests.Timeout as err:
            raise ipfs_errors.TimeoutError(err) from err
        except requests.RequestException as err:
            raise ipfs_errors.ConnectionError(err) from err
        with response:
            if response.status_code != 200:
                raise ipfs_errors.ErrorResponse(_error_message(response), None)
            encoding = response.headers.get("Content-Encoding", "identity")
            if encoding.strip().lower() not in ("", "identity"):
                raise ContentUnavailable(
                    f"cat of CID {cid}: {source} sent the object with "
                    f"Content-Encoding {encoding!r:.50}, but identity was requested"
                )
            try:
                while True:
                    # read1 returns as soon as some bytes arrive, so the deadline
                    # is checked however slowly the node sends.
                    chunk = response.raw.read1(_READ_SIZE, decode_content=False)
                    if not chunk:
                        break
                    if time.monotonic() > deadline:
                        raise ContentUnavailable(
                            f"cat of CID {cid} took longer than "
                            f"{self.transfer_timeout} s on {source}, after "
                            f"{verifier.size} bytes"
                        )
                    verifier.update(chunk)
                    self.check_size(verifier.size, f"object {cid} served by {source}")
                    chunks.append(chunk)
            except urllib3.exceptions.ReadTimeoutError as err:
                raise ipfs_errors.TimeoutError(err) from err
            except (urllib3.exceptions.HTTPError, OSError) as err:
                raise ipfs_errors.ConnectionError(err) from err
        verifier.verify(source=source)
        return b"".join(chunks)

    def _read_verified_unix(self, cid: str) -> bytes:
        """Read through ipfshttpclient, for an API on a Unix socket."""
        # NOTE: here the transfer deadline is checked between the chunks that
        # ipfshttpclient yields, and a compressed body is decoded before counting.
        verifier = ContentVerifier(cid)
        chunks: list[bytes] = []
        deadline = time.monotonic() + self.transfer_timeout
        stream = self._client.cat(cid, length=self.max_object_size + 1, stream=True)
        try:
            for chunk in stream:
                if time.monotonic() > deadline:
                    raise ContentUnavailable(
                        f"cat of CID {cid} took longer than {self.transfer_timeout} s "
                        f"on Kubo API {self.api_addr}, after {verifier.size} bytes"
                    )
                verifier.update(chunk)
                self.check_size(
                    verifier.size, f"object {cid} served by Kubo API {self.api_addr}"
                )
                chunks.append(chunk)
        except OSError as err:
            if _is_timeout(err):
                raise ipfs_errors.TimeoutError(err) from err
            raise ipfs_errors.ConnectionError(err) from err
        finally:
            stream.close()
        verifier.verify(source=f"Kubo API {self.api_addr}")
        return b"".join(chunks)

    def get(self, cid: str) -> bytes:
        normalized = normalize_cid(cid)
        data = self._run_or_unavailable(
            "cat", normalized, lambda: self._read_verified(normalized)
        )
        logger.debug(
            "kubo_get cid=%s size=%s api=%s", normalized, len(data), self.api_addr
        )
        return data

    def has(self, cid: str) -> bool:
        """Return whether the node holds every block of ``cid`` locally.

        Lists the DAG's references recursively in offline mode. Raises
        StorageError if the node cannot be reached.
        """
        normalized = normalize_cid(cid)

        def list_refs() -> Any:
            return self._client.unstable.refs(
                normalized,
                opts={"recursive": "true", "timeout": f"{self.has_timeout}s"},
                offline=True,
                timeout=self.has_timeout + self.timeout,
            )

        try:
            refs = self._call("has", normalized, list_refs)
        except ipfs_errors.ErrorResponse as err:
            logger.debug("kubo_has_missing cid=%s error=%s", normalized, err)
            return False
        except (_RetriesExhaustedError, ipfs_errors.Error) as err:
            raise StorageError(
                f"failed to check CID {normalized} on Kubo API {self.api_addr}: {err}"
            ) from err
        errors = [ref["Err"] for ref in refs if ref.get("Err")]
        if errors:
            logger.debug("kubo_has_missing cid=%s error=%s", normalized, errors[0])
            return False
        return True


def _error_message(response: requests.Response) -> str:
    """Return the Message of a Kubo error response, or its HTTP status."""
    body = response.raw.read(_ERROR_BODY_LIMIT, decode_content=False)
    try:
        message = json.loads(body)["Message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} {body[:200]!r}"
    return f"HTTP {response.status_code}: {str(message)[:500]}"
