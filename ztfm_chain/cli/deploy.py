"""``ztfm deploy``: deploy the contracts and save the manifest under ``$ZTFM_HOME``.

This module also resolves the role keys of the other groups (``--registrar``,
``--attestor``, ...). On Anvil's chain id 31337 an omitted role key defaults to the
public development key that has the role in the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from rich.table import Table

from ztfm_chain.chain.anvil import ANVIL_CHAIN_ID
from ztfm_chain.chain.client import ChainClient
from ztfm_chain.chain.deploy import (
    DEFAULT_INITIAL_TRUST,
    Deployment,
    RoleHolders,
    System,
    connect,
    load_manifest,
    manifest_path,
    save_manifest,
)
from ztfm_chain.chain.deploy import deploy as deploy_contracts
from ztfm_chain.cli.chain import (
    DEV_ACCOUNTS,
    check_range,
    command_settings,
    notice,
    parse_address,
    print_json,
    stderr_console,
    stdout_console,
)
from ztfm_chain.cli.common import dev_account, handle_errors
from ztfm_chain.cli.settings import Settings
from ztfm_chain.exceptions import ChainMismatch, ConfigError, UsageError

#: The development key that ``ztfm deploy`` gives each role on chain id 31337.
DEV_ROLE_KEYS = {
    "--admin": "dev:0",
    "--registrar": "dev:1",
    "--attestor": "dev:2",
    "--model-manager": "dev:3",
    "--aggregator": "dev:4",
}

DEV_KEY_WARNING = (
    "Anvil's development keys are public: anyone can sign with them. Use keystores "
    "on a chain that holds value."
)

PasswordFileOption = Annotated[
    Path | None,
    typer.Option(
        help="File with the password of the keystores this command opens (default "
        "$ZTFM_PASSWORD_FILE, then $ZTFM_PASSWORD, then a prompt).",
        show_default=False,
    ),
]


@handle_errors
def deploy(
    ctx: typer.Context,
    admin: Annotated[
        str | None,
        typer.Option(
            help="KEY that deploys and keeps DEFAULT_ADMIN_ROLE: a keystore name in "
            "$ZTFM_HOME/keys, a keystore path, or dev:N (default dev:0 on 31337).",
            show_default=False,
        ),
    ] = None,
    registrar: Annotated[
        str | None,
        typer.Option(
            help="KEY or 0x address that gets REGISTRAR_ROLE (default dev:1 on 31337).",
            show_default=False,
        ),
    ] = None,
    attestor: Annotated[
        str | None,
        typer.Option(
            help="KEY or 0x address that gets ATTESTOR_ROLE (default dev:2 on 31337).",
            show_default=False,
        ),
    ] = None,
    model_manager: Annotated[
        str | None,
        typer.Option(
            help="KEY or 0x address that gets MODEL_MANAGER_ROLE (default dev:3 on "
            "31337).",
            show_default=False,
        ),
    ] = None,
    aggregator: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY or 0x address that gets AGGREGATOR_ROLE; repeat for several "
            "(default dev:4 on 31337).",
            show_default=False,
        ),
    ] = None,
    initial_trust: Annotated[
        int,
        typer.Option(help="Trust score of a device never scored, in basis points."),
    ] = DEFAULT_INITIAL_TRUST,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Deploy even if the manifest of this chain still matches a "
            "deployment, and replace that manifest.",
        ),
    ] = False,
    password_file: PasswordFileOption = None,
) -> None:
    """Deploy the DID, device, trust and model registries and grant each role.

    The manifest goes to $ZTFM_HOME/deployments/<chain id>.json, where every other
    command finds the addresses.
    """
    cfg = command_settings(ctx)
    check_range("--initial-trust", initial_trust, 0, 10_000, "basis points")
    client = cfg.client()
    _check_existing(cfg, client, force)
    keys = _role_keys(
        client.chain_id,
        admin=admin,
        registrar=registrar,
        attestor=attestor,
        model_manager=model_manager,
        aggregators=aggregator or [],
    )
    admin_account = cfg.account(
        keys["--admin"][0], chain_id=client.chain_id, password_file=password_file
    )
    holders = {
        option: [
            account_address(cfg, key, client.chain_id, option, password_file)
            for key in values
        ]
        for option, values in keys.items()
        if option != "--admin"
    }
    _check_distinct(admin_account.address, holders)
    roles = RoleHolders(
        registrar=holders["--registrar"][0],
        attestor=holders["--attestor"][0],
        model_manager=holders["--model-manager"][0],
        aggregators=tuple(holders["--aggregator"]),
    )
    with stderr_console().status(f"deploying the contracts to {client.url}"):
        deployment = deploy_contracts(
            client, admin_account, roles, initial_trust=initial_trust
        )
    path = save_manifest(deployment, cfg.home)
    _print_deployment(cfg, deployment, path)


def _role_keys(
    chain_id: int,
    *,
    admin: str | None,
    registrar: str | None,
    attestor: str | None,
    model_manager: str | None,
    aggregators: list[str],
) -> dict[str, list[str]]:
    given: dict[str, list[str]] = {
        "--admin": [admin] if admin else [],
        "--registrar": [registrar] if registrar else [],
        "--attestor": [attestor] if attestor else [],
        "--model-manager": [model_manager] if model_manager else [],
        "--aggregator": list(aggregators),
    }
    missing = [option for option, values in given.items() if not values]
    if missing and chain_id != ANVIL_CHAIN_ID:
        raise ConfigError(
            f"missing {', '.join(missing)} on chain id {chain_id}: give a keystore "
            f"name, a keystore path or an address for each (dev:N keys are accepted "
            f"on chain id {ANVIL_CHAIN_ID} only)"
        )
    if missing:
        defaults = ", ".join(f"{option} {DEV_ROLE_KEYS[option]}" for option in missing)
        notice(f"using development keys {defaults}. {DEV_KEY_WARNING}")
    for option in missing:
        given[option] = [DEV_ROLE_KEYS[option]]
    return given


def _check_distinct(
    admin: ChecksumAddress, holders: dict[str, list[ChecksumAddress]]
) -> None:
    seen: dict[str, str] = {admin: "--admin"}
    for option, addresses in holders.items():
        for address in addresses:
            if address in seen and not (
                option == "--aggregator" and seen[address] == option
            ):
                raise UsageError(
                    f"{option} {address} is also {seen[address]}: give each role its "
                    "own account, so that one leaked key grants one role"
                )
            seen[address] = option


def _check_existing(cfg: Settings, client: ChainClient, force: bool) -> None:
    path = manifest_path(cfg.home, client.chain_id)
    if not path.is_file():
        return
    try:
        connect(client, load_manifest(path))
    except (ChainMismatch, ConfigError) as exc:
        notice(f"replacing manifest {path}, which does not match this chain: {exc}")
        return
    if not force:
        raise UsageError(
            f"manifest {path} already describes a deployment on this chain; pass "
            "--force to deploy again and replace it"
        )
    notice(f"replacing manifest {path} of a deployment that still exists (--force)")


def _print_deployment(cfg: Settings, deployment: Deployment, path: Path) -> None:
    result: dict[str, Any] = {
        "chain_id": deployment.chain_id,
        "genesis_hash": deployment.genesis_hash,
        "manifest": str(path),
        "deployed_at_block": deployment.deployed_at_block,
        "admin": deployment.admin,
        "contracts": dict(deployment.addresses()),
        "roles": deployment.roles,
    }
    if cfg.json_output:
        print_json(result)
        return
    table = Table(title=f"Deployment on chain id {deployment.chain_id}")
    table.add_column("contract or role")
    table.add_column("address")
    for name, address in deployment.addresses().items():
        table.add_row(name, address)
    table.add_row("DEFAULT_ADMIN_ROLE", deployment.admin)
    for role, addresses in deployment.roles.items():
        table.add_row(role, "\n".join(addresses))
    out = stdout_console()
    out.print(table)
    out.print(f"manifest saved to {path}")


# ---------------------------------------------------------------------------------
# Role keys of the other groups
# ---------------------------------------------------------------------------------


def account_address(
    cfg: Settings,
    value: str,
    chain_id: int,
    option: str,
    password_file: Path | None = None,
) -> ChecksumAddress:
    """Return the address ``value`` names: a 0x address, or a KEY that is opened."""
    if value.lower().startswith("0x"):
        return parse_address(value, option)
    account = cfg.account(value, chain_id=chain_id, password_file=password_file)
    return account.address


def role_account(
    cfg: Settings,
    system: System,
    key: str | None,
    *,
    role: str,
    option: str,
    password_file: Path | None = None,
) -> LocalAccount:
    """Open the KEY given for a role, or on 31337 the dev key with the role.

    The role's accounts come from the manifest. Raises ConfigError when ``key`` is
    None on another chain, or when no development key has ``role`` there.
    """
    chain_id = system.client.chain_id
    if key is not None:
        return cfg.account(key, chain_id=chain_id, password_file=password_file)
    if chain_id != ANVIL_CHAIN_ID:
        raise ConfigError(
            f"missing {option} on chain id {chain_id}: give a KEY that has {role}"
        )
    holders = system.deployment.roles.get(role, [])
    for index in range(DEV_ACCOUNTS):
        account = dev_account(index)
        if account.address in holders:
            notice(
                f"{option} defaults to dev:{index}, which has {role}. {DEV_KEY_WARNING}"
            )
            return account
    raise ConfigError(
        f"no development key has {role} in the manifest ({', '.join(holders) or 'none'}); "
        f"pass {option} KEY"
    )
