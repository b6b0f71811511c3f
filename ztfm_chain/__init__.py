"""Zero-trust federated learning for IoT fleets, with provenance on an EVM chain."""

import sys as _sys

import py_ecc as _py_ecc  # noqa: F401 - imported for its side effect, undone below

__version__ = "0.1.0"

# py_ecc (imported by eth-account and web3) raises the recursion limit to 100,000 for
# its own pairing code, which this package never calls. With that limit, json.loads
# of a deeply nested document from an untrusted peer overflows the C stack and kills
# the process instead of raising RecursionError. Restore the interpreter default.
_sys.setrecursionlimit(1_000)
