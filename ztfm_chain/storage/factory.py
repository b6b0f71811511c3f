"""Choose a store backend from a path, a ``file://`` URL, a multiaddr or a URL."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from ztfm_chain.exceptions import ConfigError
from ztfm_chain.storage.base import DEFAULT_MAX_OBJECT_SIZE, Store
from ztfm_chain.storage.embedded import EmbeddedStore
from ztfm_chain.storage.kubo import KuboStore

# A location that starts with one of these is a multiaddr, not a path.
MULTIADDR_PREFIXES = ("/ip4/", "/ip6/", "/dns/", "/dns4/", "/dns6/")


def default_store_location(environ: Mapping[str, str] | None = None) -> str:
    """Return ``$ZTFM_STORE``, else ``$ZTFM_HOME/store`` (``~/.ztfm/store``)."""
    env = os.environ if environ is None else environ
    store = env.get("ZTFM_STORE")
    if store:
        return store
    home = env.get("ZTFM_HOME") or str(Path("~/.ztfm").expanduser())
    return str(Path(home) / "store")


def open_store(
    url_or_path: str,
    *,
    cid_version: int = 1,
    max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
    timeout: float = 30.0,
    retries: int = 3,
) -> Store:
    """Open the store at ``url_or_path``.

    A filesystem path or a ``file://`` URL opens an EmbeddedStore. A multiaddr
    (``/ip4/127.0.0.1/tcp/5001/http``, also ``/ip6/`` and ``/dns*/``) or an
    ``http://`` or ``https://`` URL opens a KuboStore on that RPC API, with
    ``timeout`` and ``retries``. Raises ConfigError for an empty location or
    another URL scheme.
    """
    if not url_or_path:
        raise ConfigError("invalid store location '': expected a path or a URL")
    if url_or_path.startswith(MULTIADDR_PREFIXES):
        return KuboStore(
            url_or_path,
            cid_version=cid_version,
            max_object_size=max_object_size,
            timeout=timeout,
            retries=retries,
        )
    url = urllib.parse.urlsplit(url_or_path)
    if url.scheme in ("http", "https"):
        return KuboStore(
            url_or_path,
            cid_version=cid_version,
            max_object_size=max_object_size,
            timeout=timeout,
            retries=retries,
        )
    if url.scheme == "file":
        if url.netloc not in ("", "localhost"):
            raise ConfigError(
                f"invalid store URL {url_or_path!r}: a file URL must name a local "
                "path, as in file:///var/lib/ztfm/store"
            )
        root = Path(urllib.parse.unquote(url.path))
    elif "://" in url_or_path:
        raise ConfigError(
            f"invalid store URL {url_or_path!r}: the scheme {url.scheme!r} is not "
            "supported, use a path, file://, http://, https:// or a multiaddr"
        )
    else:
        root = Path(url_or_path).expanduser()
    return EmbeddedStore(root, cid_version=cid_version, max_object_size=max_object_size)
