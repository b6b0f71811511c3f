"""Compile contracts/ with solcjs and rewrite the checked-in artefacts.

Run after changing a contract: ``.venv/bin/python scripts/compile_contracts.py``.
"""

from __future__ import annotations

from ztfm_chain.chain.compiler import write_artifacts

if __name__ == "__main__":
    for path in write_artifacts():
        print(path)
