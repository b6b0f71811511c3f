"""``ztfm demo``: the whole system on one machine, with embedded defaults."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

import typer
from eth_account import Account
from rich.console import Console
from rich.table import Table

from ztfm_chain.chain.anvil import Anvil
from ztfm_chain.chain.client import ChainClient
from ztfm_chain.chain.deploy import RoleHolders, connect, deploy
from ztfm_chain.cli.common import dev_account, handle_errors
from ztfm_chain.identity import registrar

console = Console(stderr=True)


@handle_errors
def demo(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON on stdout.")
    ] = False,
) -> None:
    """Start a local Anvil, deploy the contracts, enrol and attest one device.

    Everything runs on 127.0.0.1 and stops when the command ends. The accounts are
    Anvil's public development keys: never reuse them on a chain that holds value.
    """
    admin, registrar_key, attestor, manager, aggregator = (
        dev_account(i) for i in range(5)
    )
    with Anvil() as node:
        console.print(f"chain: embedded Anvil at {node.url} (pid {node.pid})")
        client = ChainClient(node.url)
        deployment = deploy(
            client,
            admin,
            RoleHolders(
                registrar=registrar_key.address,
                attestor=attestor.address,
                model_manager=manager.address,
                aggregators=(aggregator.address,),
            ),
        )
        system = connect(client, deployment)
        device = Account.create()
        registrar.enrol_device(system, registrar_key, device, segment=1)
        registrar.attest_device(
            system,
            attestor,
            device.address,
            measurement=hashlib.sha256(b"demo firmware").digest(),
        )
        record = registrar.device_record(system, device.address)
        did = f"did:ethr:0x{client.chain_id:x}:{device.address}"
        result = {
            "chain_id": client.chain_id,
            "rpc_url": node.url,
            "contracts": deployment.addresses(),
            "device": {
                "did": did,
                "status": record.status.name,
                "segment": record.segment,
                "credential_expires_at": record.credential_expires_at,
            },
        }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(title="Deployment (embedded Anvil, stopped now)")
    table.add_column("contract")
    table.add_column("address")
    for name, address in deployment.addresses().items():
        table.add_row(name, address)
    Console().print(table)
    Console().print(
        f"device {did}: {record.status.name}, segment {record.segment}, "
        f"credential valid until {record.credential_expires_at} (unix time)"
    )
