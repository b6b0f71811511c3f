"""Settings shared by every ``ztfm`` command: where the chain, store and keys are.

Each setting is taken from, in order: the command-line option, the environment
variable, the config file (TOML, ``$ZTFM_HOME/config.toml`` or ``--config``), then the
embedded default. The embedded defaults are a local Anvil started by ``ztfm chain up``
(its URL is recorded in ``$ZTFM_HOME/chain.json``), the embedded store in
``$ZTFM_HOME/store`` and keystores in ``$ZTFM_HOME/keys``.

Keys are named by ``--key``: a keystore file path, a name of a keystore in
``$ZTFM_HOME/keys`` (``registrar`` means ``keys/registrar.json``), or ``dev:N`` for
Anvil's public development account N, which is accepted on chain id 31337 only.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from ztfm_chain.chain.anvil import ANVIL_CHAIN_ID
from ztfm_chain.chain.client import ChainClient
from ztfm_chain.chain.deploy import (
    Deployment,
    System,
    connect,
    load_manifest,
    manifest_path,
)
from ztfm_chain.cli.common import dev_account
from ztfm_chain.exceptions import ConfigError, KeystoreError
from ztfm_chain.identity.keys import load_account, resolve_password
from ztfm_chain.storage import Store, open_store

log = logging.getLogger(__name__)

ENV_HOME = "ZTFM_HOME"
ENV_RPC_URL = "ZTFM_RPC_URL"
ENV_STORE = "ZTFM_STORE"
ENV_CONFIG = "ZTFM_CONFIG"
ENV_PASSWORD = "ZTFM_PASSWORD"
ENV_PASSWORD_FILE = "ZTFM_PASSWORD_FILE"


@dataclass
class Settings:
    """The resolved settings of one command, and where each came from."""

    home: Path
    rpc_url: str | None
    rpc_source: str
    store_location: str
    store_source: str
    config: dict[str, Any]
    json_output: bool = False
    debug: bool = False

    @classmethod
    def resolve(
        cls,
        *,
        home: Path | None = None,
        rpc_url: str | None = None,
        store: str | None = None,
        config_path: Path | None = None,
        json_output: bool = False,
        debug: bool = False,
    ) -> Settings:
        """Apply the precedence option > environment > config file > default."""
        resolved_home = (
            home or Path(os.environ.get(ENV_HOME) or Path.home() / ".ztfm")
        ).expanduser()
        config_file = config_path or (
            Path(os.environ[ENV_CONFIG])
            if os.environ.get(ENV_CONFIG)
            else resolved_home / "config.toml"
        )
        config = _read_config(config_file, explicit=config_path is not None)
        url, url_source = _first(
            (rpc_url, "--rpc-url"),
            (os.environ.get(ENV_RPC_URL), f"${ENV_RPC_URL}"),
            (config.get("rpc_url"), f"{config_file}"),
            (_embedded_chain_url(resolved_home), "ztfm chain up"),
        )
        location, store_source = _first(
            (store, "--store"),
            (os.environ.get(ENV_STORE), f"${ENV_STORE}"),
            (config.get("store"), f"{config_file}"),
            (str(resolved_home / "store"), "embedded default"),
        )
        assert location is not None
        return cls(
            home=resolved_home,
            rpc_url=url,
            rpc_source=url_source,
            store_location=location,
            store_source=store_source,
            config=config,
            json_output=json_output,
            debug=debug,
        )

    # --- chain ------------------------------------------------------------------

    def client(self) -> ChainClient:
        """Connect to the chain, or raise ConfigError naming how to get one."""
        if self.rpc_url is None:
            raise ConfigError(
                "no chain configured: run `ztfm chain up` for a local Anvil, or pass "
                f"--rpc-url / set ${ENV_RPC_URL}"
            )
        return ChainClient(self.rpc_url)

    def deployment(self, client: ChainClient) -> Deployment:
        """Load the manifest of the connected chain."""
        return load_manifest(manifest_path(self.home, client.chain_id))

    def system(self) -> System:
        """Connect and check the deployment (chain id, genesis, code)."""
        client = self.client()
        return connect(client, self.deployment(client))

    # --- storage and keys ----------------------------------------------------------

    def store(self) -> Store:
        """Open the content store."""
        return open_store(self.store_location)

    def keys_dir(self) -> Path:
        """Return the folder of named keystores."""
        return self.home / "keys"

    def account(
        self,
        key: str,
        *,
        chain_id: int | None = None,
        password_env: str | None = None,
        password_file: Path | None = None,
    ) -> LocalAccount:
        """Load the account named by ``key`` (see the module documentation)."""
        if key.startswith("dev:"):
            if chain_id is not None and chain_id != ANVIL_CHAIN_ID:
                raise ConfigError(
                    f"development key {key!r} is public and accepted on chain id "
                    f"{ANVIL_CHAIN_ID} only, but this chain is {chain_id}; use a keystore"
                )
            try:
                index = int(key[4:])
            except ValueError:
                raise ConfigError(
                    f"invalid development key {key!r}; expected dev:N, such as dev:1"
                ) from None
            return dev_account(index)
        path = Path(key)
        if not path.suffix:
            path = self.keys_dir() / f"{key}.json"
        password = self.password(password_env=password_env, password_file=password_file)
        return load_account(path, password)

    def password(
        self, *, password_env: str | None = None, password_file: Path | None = None
    ) -> str:
        """Read a keystore password: option, environment, then an interactive prompt."""
        if password_file is not None:
            return resolve_password(file=password_file)
        if password_env is not None:
            return resolve_password(env_var=password_env)
        if os.environ.get(ENV_PASSWORD_FILE):
            return resolve_password(file=Path(os.environ[ENV_PASSWORD_FILE]))
        if os.environ.get(ENV_PASSWORD):
            return resolve_password(env_var=ENV_PASSWORD)
        try:
            return resolve_password(prompt=True)
        except KeystoreError as exc:
            raise KeystoreError(
                f"{exc}; set ${ENV_PASSWORD} or ${ENV_PASSWORD_FILE}, or pass "
                "--password-file"
            ) from None

    def describe(self) -> dict[str, str]:
        """Return where the chain and the store come from, for the output."""
        return {
            "chain": (
                f"{self.rpc_url} (from {self.rpc_source})"
                if self.rpc_url
                else "none configured (run `ztfm chain up` or pass --rpc-url)"
            ),
            "store": f"{self.store_location} (from {self.store_source})",
            "home": str(self.home),
        }


def embedded_chain_file(home: Path) -> Path:
    """Return the file in which ``ztfm chain up`` records its Anvil."""
    return home / "chain.json"


def _embedded_chain_url(home: Path) -> str | None:
    path = embedded_chain_file(home)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    url = record.get("url")
    return str(url) if url else None


def _read_config(path: Path, *, explicit: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path} not found") from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _first(*candidates: tuple[Any, str]) -> tuple[str | None, str]:
    for value, source in candidates:
        if value:
            return str(value), source
    return None, "not configured"
