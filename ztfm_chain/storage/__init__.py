"""Content-addressed storage of model updates, keyed by IPFS CIDs.

``open_store`` returns an EmbeddedStore (a local directory, the default) or a
KuboStore (an IPFS node's RPC API). Both compute CIDs as Kubo's ``ipfs add`` does
and verify every object they return against its CID.
"""

from __future__ import annotations

import logging

from ztfm_chain.storage.base import DEFAULT_MAX_OBJECT_SIZE, Store
from ztfm_chain.storage.cid import (
    CidVersion,
    ContentVerifier,
    compute_cid,
    normalize_cid,
    verify_content,
)
from ztfm_chain.storage.embedded import EmbeddedStore
from ztfm_chain.storage.factory import default_store_location, open_store
from ztfm_chain.storage.kubo import DEFAULT_KUBO_API, KuboStore

# Without logging configured, records such as retry warnings are dropped instead of
# going to stderr through logging.lastResort.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_KUBO_API",
    "DEFAULT_MAX_OBJECT_SIZE",
    "CidVersion",
    "ContentVerifier",
    "EmbeddedStore",
    "KuboStore",
    "Store",
    "compute_cid",
    "default_store_location",
    "normalize_cid",
    "open_store",
    "verify_content",
]
