"""Shared constants and data for the storage tests."""

from __future__ import annotations

import json
import random
import urllib.request

# ipfshttpclient 0.7.0 passes urllib3 2.x a deprecated argument on every request.
IPFSHTTPCLIENT_WARNING = (
    "ignore:The 'strict' parameter is no longer needed:FutureWarning"
)

CHUNK = 256 * 1024
MAX_LINKS = 174

HELLO = b"hello world\n"
HELLO_CID_V0 = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
HELLO_CID_V1 = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


def make_bytes(size: int) -> bytes:
    """Return ``size`` pseudo-random bytes, the same on every run and platform."""
    return random.Random(size).randbytes(size)


def api_version(api: str) -> dict[str, str]:
    """Return the JSON response of ``/api/v0/version`` at the multiaddr ``api``.

    Raises OSError (URLError included) if nothing responds.
    """
    _, _, host, _, port, _ = api.split("/")
    request = urllib.request.Request(
        f"http://{host}:{port}/api/v0/version", method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, str] = json.load(response)
    return answer
