"""Run ``ztfm`` in-process with CliRunner, on a fresh home and a real chain."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from ztfm_chain.chain.anvil import Anvil
from ztfm_chain.chain.client import ChainClient
from ztfm_chain.chain.deploy import System, connect, load_manifest, manifest_path
from ztfm_chain.cli.main import app

#: The installed console script, for tests that run ``ztfm`` as a real process.
ZTFM = Path(sys.prefix) / "bin" / "ztfm"
PASSWORD = "cli test password"
MEASUREMENT = "ab" * 32

#: Every variable that Settings reads, so that the caller's shell cannot leak in.
CLEARED_ENV: dict[str, str | None] = {
    "ZTFM_HOME": None,
    "ZTFM_RPC_URL": None,
    "ZTFM_STORE": None,
    "ZTFM_CONFIG": None,
    "ZTFM_PASSWORD_FILE": None,
    "ZTFM_PASSWORD": PASSWORD,
    # Wide enough that rich never folds an address or a hash in a table cell.
    "COLUMNS": "250",
}


@dataclass
class Cli:
    """``ztfm --home HOME --rpc-url URL ...``, run in-process."""

    home: Path
    rpc_url: str | None
    runner: CliRunner = field(default_factory=CliRunner)

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        env: Mapping[str, str | None] | None = None,
    ) -> Result:
        options = ["--home", str(self.home)]
        if self.rpc_url is not None:
            options += ["--rpc-url", self.rpc_url]
        return self.runner.invoke(
            app, [*options, *args], input=input, env={**CLEARED_ENV, **(env or {})}
        )

    def ok(self, *args: str) -> Result:
        """Run a command that must succeed."""
        result = self(*args)
        assert result.exit_code == 0, f"{args}: {result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        """Run a command with --json that must succeed, and parse its stdout."""
        result = self.ok("--json", *args)
        return json.loads(result.stdout)

    def system(self) -> System:
        """Connect to the deployment in this home, as the library does."""
        assert self.rpc_url is not None
        client = ChainClient(self.rpc_url)
        return connect(client, load_manifest(manifest_path(self.home, client.chain_id)))


def assert_one_line_error(result: Result, exit_code: int, *fragments: str) -> None:
    """Check the exit code, and that stderr ends in one error line with each fragment."""
    assert result.exit_code == exit_code, result.stderr
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip("\n").endswith(errors[0])
    for fragment in fragments:
        assert fragment in errors[0]


@pytest.fixture
def cli(tmp_path: Path, anvil: Anvil) -> Cli:
    """A fresh home on the session's chain, with nothing deployed."""
    return Cli(tmp_path / "home", anvil.url)


@pytest.fixture(scope="module")
def deployed_cli(tmp_path_factory: pytest.TempPathFactory, anvil: Anvil) -> Cli:
    """A home with a fresh deployment on the session's chain, shared by a module."""
    cli = Cli(tmp_path_factory.mktemp("cli") / "home", anvil.url)
    cli.ok("deploy")
    return cli
