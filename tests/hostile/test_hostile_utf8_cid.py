"""A commitment whose CID bytes are not UTF-8, which the contract accepts.

Solidity does not check that a ``string`` argument is UTF-8, so an enrolled device
can commit with any bytes as its CID. The daemon decodes every UpdateCommitted
event of the registry, so one such event must not stop it.
"""

from __future__ import annotations

import hashlib

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from tests.aggregator.conftest import Federation
from tests.aggregator.test_reasons import base_hash, encoded, honest_delta
from tests.chain.conftest import fund
from tests.hostile.test_hostile_cids import run_like_daemon

COMMITMENT_STRUCT = "(uint256,uint64,address,bytes32,string,uint32,bytes32)"


def commit_raw_cid(federation: Federation, round: int, cid: bytes) -> None:
    """Commit directly from the last device's key with ``cid`` as raw string bytes."""
    device = federation.devices[-1]
    payload = encoded(federation, round, honest_delta(device))
    federation.store.put(payload)
    client = federation.system.client
    w3 = client.w3
    # The device key pays its own gas for a direct commitment.
    fund(federation.system, device.key.address)

    selector = keccak(text=f"commitUpdate({COMMITMENT_STRUCT})")[:4]
    # string and bytes have the same ABI encoding.
    arguments = encode(
        ["(uint256,uint64,address,bytes32,bytes,uint32,bytes32)"],
        [
            (
                federation.model_id,
                round,
                device.device,
                hashlib.sha256(payload).digest(),
                cid,
                50,
                base_hash(federation, round),
            )
        ],
    )

    tx = {
        "from": device.key.address,
        "to": federation.system.models.address,
        "data": "0x" + (selector + arguments).hex(),
        "gas": 500_000,
        "gasPrice": w3.eth.gas_price,
        "nonce": w3.eth.get_transaction_count(device.key.address, "pending"),
        "chainId": client.chain_id,
    }
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(device.key.sign_transaction(tx).raw_transaction)
    )
    assert receipt["status"] == 1, "the contract rejected the raw CID"


def test_invalid_utf8_cid_does_not_stall_daemon(federation: Federation) -> None:
    round = federation.open_round()
    commit_raw_cid(federation, round, b"\xff\xfe-not-utf8")
    aggregator = run_like_daemon(federation, round)
    assert aggregator.journal.phase(federation.model_id, round) == "done"
    rows = aggregator.journal.commitments(federation.model_id, round)
    hostile = next(r for r in rows if r.device == federation.devices[-1].device)
    assert hostile.status == "rejected"
    assert hostile.reason == "MALFORMED"
    assert "cid is not valid UTF-8" in (hostile.detail or "")
    assert "\ufffd" in hostile.cid
