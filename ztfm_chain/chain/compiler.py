"""Compile the project's Solidity sources with solcjs through py-solc-x.

The compiled artefacts are checked in under ``ztfm_chain/artifacts`` so that the runtime
needs no compiler; :func:`build_artifacts` reproduces them byte for byte, which a test
checks. The ERC-1056 registry is not compiled: its artefact is copied unchanged from the
``ethr-did-registry`` npm package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ztfm_chain.exceptions import ConfigError

#: Contracts compiled from ``contracts/`` and checked in as artefacts.
CONTRACTS = ("DeviceRegistry", "ModelRegistry", "TrustRegistry")
#: The deployed ERC-1056 registry, taken from the npm package.
DID_REGISTRY = "EthereumDIDRegistry"
#: solc settings shared with hardhat.config.js; change both together.
EVM_VERSION = "shanghai"
OPTIMIZER_RUNS = 200
SOLC_VERSION = "0.8.37"

_DID_REGISTRY_ARTIFACT = Path(
    "node_modules/ethr-did-registry/artifacts/contracts/"
    "EthereumDIDRegistry.sol/EthereumDIDRegistry.json"
)


def project_root() -> Path:
    """Return the source checkout that holds ``contracts/`` and ``node_modules/``.

    ``ZTFM_PROJECT_ROOT`` overrides the default, the parent of the package folder.
    """
    override = os.environ.get("ZTFM_PROJECT_ROOT")
    if override:
        return Path(override).resolve()
    return Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    """Return the folder of the checked-in artefacts inside the package."""
    return Path(__file__).resolve().parents[1] / "artifacts"


def standard_json_input(root: Path | None = None) -> dict[str, Any]:
    """Build the solc standard-JSON input for every source under ``contracts/``."""
    root = root or project_root()
    sources: dict[str, dict[str, str]] = {}
    for path in sorted((root / "contracts").rglob("*.sol")):
        name = path.relative_to(root).as_posix()
        sources[name] = {"content": path.read_text(encoding="utf-8")}
    if not sources:
        raise ConfigError(f"no Solidity sources found under {root / 'contracts'}")
    return {
        "language": "Solidity",
        "sources": sources,
        "settings": {
            "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
            "evmVersion": EVM_VERSION,
            "outputSelection": {
                "*": {
                    "*": [
                        "abi",
                        "evm.bytecode.object",
                        "evm.deployedBytecode.object",
                        "metadata",
                    ]
                }
            },
        },
    }


def compile_sources(root: Path | None = None) -> dict[str, Any]:
    """Run solcjs on the sources and return solc's standard-JSON output.

    Raises :class:`ConfigError` when ``node_modules`` is missing or a source does not
    compile.
    """
    import solcx  # imported here: only compiling needs it

    root = root or project_root()
    wrapper = root / "scripts" / "solc"
    if not (root / "node_modules" / "solc").is_dir():
        raise ConfigError(
            f"npm package 'solc' not found under {root / 'node_modules'}; run `npm ci`"
        )
    try:
        output: dict[str, Any] = solcx.compile_standard(
            standard_json_input(root),
            solc_binary=wrapper,
            base_path=str(root),
            allow_empty=False,
        )
    except solcx.exceptions.SolcError as exc:
        # SolcError's text includes the whole compiler output: keep the messages only.
        raise ConfigError(f"Solidity compilation failed: {exc.message}") from None
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        messages = "; ".join(e.get("formattedMessage", e["message"]) for e in errors)
        raise ConfigError(f"Solidity compilation failed: {messages}")
    return output


def build_artifacts(root: Path | None = None) -> dict[str, str]:
    """Compile the sources and return each artefact's file name and JSON text."""
    root = root or project_root()
    output = compile_sources(root)
    texts: dict[str, str] = {}
    for name in CONTRACTS:
        compiled = output["contracts"][f"contracts/{name}.sol"][name]
        artefact = {
            "contractName": name,
            "sourceName": f"contracts/{name}.sol",
            "compiler": {"version": SOLC_VERSION, "evmVersion": EVM_VERSION},
            "abi": compiled["abi"],
            "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
            "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
            "metadata": compiled["metadata"],
        }
        texts[f"{name}.json"] = _dump(artefact)
    texts[f"{DID_REGISTRY}.json"] = _dump(did_registry_artifact(root))
    return texts


def did_registry_artifact(root: Path | None = None) -> dict[str, Any]:
    """Return the ERC-1056 registry's ABI and bytecode from the npm package."""
    root = root or project_root()
    path = root / _DID_REGISTRY_ARTIFACT
    if not path.is_file():
        raise ConfigError(f"ERC-1056 artefact not found at {path}; run `npm ci`")
    package = json.loads(path.read_text(encoding="utf-8"))
    return {
        "contractName": DID_REGISTRY,
        "sourceName": "ethr-did-registry (npm)",
        "abi": package["abi"],
        "bytecode": package["bytecode"],
        "deployedBytecode": package["deployedBytecode"],
    }


def write_artifacts(root: Path | None = None) -> list[Path]:
    """Compile and write every artefact into the package; return the paths written."""
    target = artifacts_dir()
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in build_artifacts(root).items():
        path = target / file_name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _dump(artefact: dict[str, Any]) -> str:
    return json.dumps(artefact, indent=2, sort_keys=True) + "\n"
