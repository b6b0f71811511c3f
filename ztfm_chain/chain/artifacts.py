"""Load the checked-in contract artefacts (ABI and bytecode)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from ztfm_chain.chain.compiler import CONTRACTS, DID_REGISTRY, artifacts_dir
from ztfm_chain.exceptions import ConfigError

#: Every contract the deployment consists of, in deployment order.
ALL_CONTRACTS = (DID_REGISTRY, "DeviceRegistry", "TrustRegistry", "ModelRegistry")


@dataclass(frozen=True)
class Artifact:
    """A compiled contract: its name, ABI, creation and runtime bytecode."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str


@cache
def load_artifact(name: str) -> Artifact:
    """Return the checked-in artefact of contract ``name``."""
    if name not in ALL_CONTRACTS:
        raise ConfigError(
            f"unknown contract {name!r}; expected one of {', '.join(ALL_CONTRACTS)}"
        )
    path = artifacts_dir() / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"artefact {path} is missing; run `python scripts/compile_contracts.py`"
        ) from None
    return Artifact(
        name=name,
        abi=data["abi"],
        bytecode=data["bytecode"],
        deployed_bytecode=data["deployedBytecode"],
    )


def compiled_contracts() -> tuple[str, ...]:
    """Return the names of the contracts compiled from this project's sources."""
    return CONTRACTS
