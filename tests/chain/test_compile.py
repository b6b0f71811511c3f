"""The checked-in artefacts are what the sources compile to, with either toolchain."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ztfm_chain.chain import compiler
from ztfm_chain.exceptions import ConfigError


def test_fresh_compile_reproduces_artifacts_byte_for_byte() -> None:
    fresh = compiler.build_artifacts()
    for file_name, text in fresh.items():
        checked_in = (compiler.artifacts_dir() / file_name).read_text(encoding="utf-8")
        assert text == checked_in, (
            f"{file_name} differs: run scripts/compile_contracts.py"
        )


def test_did_registry_artifact_is_the_npm_package_bytecode() -> None:
    package = json.loads(
        (
            compiler.project_root()
            / "node_modules/ethr-did-registry/artifacts/contracts"
            / "EthereumDIDRegistry.sol/EthereumDIDRegistry.json"
        ).read_text()
    )
    ours = json.loads(
        (compiler.artifacts_dir() / "EthereumDIDRegistry.json").read_text()
    )
    assert ours["bytecode"] == package["bytecode"]
    assert ours["abi"] == package["abi"]


def test_hardhat_compiles_the_same_bytecode(tmp_path: Path) -> None:
    root = compiler.project_root()
    env = {**os.environ, "HOME": str(tmp_path), "npm_config_update_notifier": "false"}
    result = subprocess.run(
        ["npx", "--no-install", "hardhat", "compile", "--quiet"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in compiler.CONTRACTS:
        hardhat = json.loads(
            (root / f"artifacts-hardhat/contracts/{name}.sol/{name}.json").read_text()
        )
        ours = json.loads((compiler.artifacts_dir() / f"{name}.json").read_text())
        assert hardhat["bytecode"] == ours["bytecode"], name
        assert hardhat["deployedBytecode"] == ours["deployedBytecode"], name


def test_compile_error_names_file_and_problem(tmp_path: Path) -> None:
    root = compiler.project_root()
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "Broken.sol").write_text(
        "// SPDX-License-Identifier: MIT\npragma solidity ^0.8.24;\ncontract Broken { uint x = ; }\n"
    )
    (tmp_path / "scripts").mkdir()
    shutil.copy(root / "scripts" / "solc", tmp_path / "scripts" / "solc")
    (tmp_path / "node_modules").symlink_to(root / "node_modules")
    with pytest.raises(ConfigError, match=r"contracts/Broken\.sol.*|ParserError"):
        compiler.compile_sources(tmp_path)


def test_compile_without_sources_rejected(tmp_path: Path) -> None:
    (tmp_path / "contracts").mkdir()
    with pytest.raises(ConfigError, match="no Solidity sources"):
        compiler.standard_json_input(tmp_path)
