"""The fast path of commitment signatures against eth-account and the contract.

``eip712.commitment_digest`` must return the digest that ``encode_typed_data`` and
the ModelRegistry's ``commitmentDigest`` compute. ``eip712.recover_address`` must
recover the address that eth-account recovers and reject every signature that the
contracts' ``Signatures.recover`` rejects.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import coincurve
import pytest
from eth_account import Account
from eth_hash.auto import keccak as eth_hash_keccak
from eth_keys.exceptions import BadSignature
from eth_utils.address import to_checksum_address
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.chain.conftest import new_key
from ztfm_chain.aggregator import verify
from ztfm_chain.aggregator.journal import CommitmentRow
from ztfm_chain.aggregator.reasons import Reason
from ztfm_chain.chain.deploy import System
from ztfm_chain.exceptions import SignatureError, UsageError
from ztfm_chain.identity import eip712, native
from ztfm_chain.identity.commitments import Commitment

N = eip712.SECP256K1_N
#: The secp256k1 field prime.
P = 2**256 - 2**32 - 977
UINT256_MAX = 2**256 - 1
UINT64_MAX = 2**64 - 1
UINT32_MAX = 2**32 - 1
REGISTRY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
CID = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


def x_without_curve_point() -> int:
    """Return the smallest x for which y^2 = x^3 + 7 has no solution mod P."""
    x = 1
    while pow(x**3 + 7, (P - 1) // 2, P) == 1:
        x += 1
    return x


NOT_ON_CURVE = x_without_curve_point()

addresses = st.binary(min_size=20, max_size=20).map(to_checksum_address)
hashes = st.binary(min_size=32, max_size=32)
# Text of any Unicode code points except surrogates, which UTF-8 cannot encode, up to
# 600 characters (up to 2,400 UTF-8 bytes, many Keccak blocks).
cids = st.one_of(st.just(CID), st.text(max_size=600))


@st.composite
def commitments(draw: st.DrawFn) -> Commitment:
    return Commitment(
        model_id=draw(st.integers(0, UINT256_MAX)),
        round=draw(st.integers(0, UINT64_MAX)),
        device=draw(addresses),
        content_hash=draw(hashes),
        cid=draw(cids),
        sample_count=draw(st.integers(0, UINT32_MAX)),
        base_model_hash=draw(hashes),
    )


MAX_COMMITMENT = Commitment(
    model_id=UINT256_MAX,
    round=UINT64_MAX,
    device=to_checksum_address(b"\xff" * 20),
    content_hash=b"\xff" * 32,
    cid="\U0010ffff" * 300,
    sample_count=UINT32_MAX,
    base_model_hash=b"\xff" * 32,
)
ZERO_COMMITMENT = Commitment(
    0, 0, to_checksum_address(bytes(20)), bytes(32), "", 0, bytes(32)
)
UNICODE_COMMITMENT = Commitment(
    1,
    2,
    to_checksum_address(b"\x01" * 20),
    b"\x02" * 32,
    "ḃäƒÿ 雪 🚀\x00",
    3,
    b"\x04" * 32,
)


def typed_data_digest(
    commitment: Commitment, chain_id: int, registry: str, nonce: int
) -> bytes:
    message = commitment.message(
        chain_id=chain_id, model_registry=registry, nonce=nonce
    )
    return eip712.digest(message)


def eth_account_address(digest: bytes, signature: bytes) -> bytes:
    """Recover with eth-account, which takes v only as 27 or 28."""
    v = signature[64]
    normalised = signature[:64] + bytes([v + 27 if v < 27 else v])
    recovered: str = Account._recover_hash(digest, signature=normalised)
    return bytes.fromhex(recovered[2:])


def signed(private_key: int, digest: bytes) -> bytes:
    """Sign a digest with eth-account, which sets v to 27 or 28."""
    account = Account.from_key(private_key.to_bytes(32, "big"))
    return bytes(account.unsafe_sign_hash(digest).signature)


# ---------------------------------------------------------------------------------
# Digest
# ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    commitment=commitments(),
    chain_id=st.integers(0, UINT256_MAX),
    registry=addresses,
    nonce=st.integers(0, UINT64_MAX),
    lower_case=st.booleans(),
)
@example(
    MAX_COMMITMENT, UINT256_MAX, to_checksum_address(b"\xff" * 20), UINT64_MAX, False
)
@example(ZERO_COMMITMENT, 0, to_checksum_address(bytes(20)), 0, True)
@example(UNICODE_COMMITMENT, 31337, REGISTRY, 7, False)
def test_commitment_digest_matches_typed_data(
    commitment: Commitment, chain_id: int, registry: str, nonce: int, lower_case: bool
) -> None:
    expected = typed_data_digest(commitment, chain_id, registry, nonce)
    fast = eip712.commitment_digest(
        chain_id=chain_id,
        model_registry=registry.lower() if lower_case else registry,
        model_id=commitment.model_id,
        round=commitment.round,
        device=commitment.device.lower() if lower_case else commitment.device,
        content_hash=commitment.content_hash,
        cid=commitment.cid,
        sample_count=commitment.sample_count,
        base_model_hash=commitment.base_model_hash,
        nonce=nonce,
    )
    assert fast == expected


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(commitment=commitments(), nonce=st.integers(0, UINT64_MAX))
@example(MAX_COMMITMENT, UINT64_MAX)
@example(ZERO_COMMITMENT, 0)
@example(UNICODE_COMMITMENT, 7)
def test_commitment_digest_matches_contract(
    deployed: System, commitment: Commitment, nonce: int
) -> None:
    # commitmentDigest is a view, so the session's deployment stays unchanged.
    on_chain = bytes(
        deployed.models.functions.commitmentDigest(commitment.as_tuple(), nonce).call()
    )
    fast = commitment.digest(
        chain_id=deployed.client.chain_id,
        model_registry=deployed.deployment.model_registry,
        nonce=nonce,
    )
    assert fast == on_chain


def test_commitment_digest_changes_with_each_field() -> None:
    base = {
        "chain_id": 31337,
        "model_registry": REGISTRY,
        "model_id": 1,
        "round": 2,
        "device": to_checksum_address(b"\x01" * 20),
        "content_hash": b"\x02" * 32,
        "cid": CID,
        "sample_count": 3,
        "base_model_hash": b"\x04" * 32,
        "nonce": 5,
    }
    changed: dict[str, Any] = {
        "chain_id": 1,
        "model_registry": to_checksum_address(b"\x09" * 20),
        "model_id": 9,
        "round": 9,
        "device": to_checksum_address(b"\x09" * 20),
        "content_hash": b"\x09" * 32,
        "cid": CID + "x",
        "sample_count": 9,
        "base_model_hash": b"\x09" * 32,
        "nonce": 9,
    }
    digest = eip712.commitment_digest(**base)
    for field, value in changed.items():
        other = eip712.commitment_digest(**{**base, field: value})
        assert other != digest, f"digest ignores {field}"


def test_domain_separator_cached() -> None:
    eip712.domain_separator.cache_clear()
    kwargs: dict[str, Any] = {
        "chain_id": 31337,
        "model_registry": REGISTRY,
        "model_id": 1,
        "round": 1,
        "device": REGISTRY,
        "content_hash": bytes(32),
        "cid": CID,
        "sample_count": 1,
        "base_model_hash": bytes(32),
        "nonce": 0,
    }
    eip712.commitment_digest(**kwargs)
    eip712.commitment_digest(**{**kwargs, "nonce": 1})
    info = eip712.domain_separator.cache_info()
    assert info.misses == 1
    assert info.hits == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model_id", 2**256, "model_id must be a uint256"),
        ("model_id", -1, "model_id must be a uint256"),
        ("round", 2**64, "round must be a uint64"),
        ("sample_count", 2**32, "sample_count must be a uint32"),
        ("sample_count", -1, "sample_count must be a uint32"),
        ("nonce", 2**64, "nonce must be a uint64"),
        ("chain_id", 2**256, "chain_id must be a uint256"),
        ("content_hash", bytes(31), "content_hash must be 32 bytes"),
        ("base_model_hash", bytes(33), "base_model_hash must be 32 bytes"),
        ("device", "0x" + "00" * 19, "device must be a 0x-prefixed address"),
        ("device", "0x" + "zz" * 20, "device must be a 0x-prefixed address"),
        ("device", "00" * 21, "device must be a 0x-prefixed address"),
        ("device", "0x" + "00 " * 13 + "0", "device must be a 0x-prefixed address"),
        ("model_registry", "0x1234", "verifying_contract must be a 0x-prefixed"),
        ("cid", "bafy\ud800", "cid is not valid Unicode text"),
    ],
)
def test_commitment_digest_rejects_invalid_field(
    field: str, value: Any, message: str
) -> None:
    kwargs: dict[str, Any] = {
        "chain_id": 31337,
        "model_registry": REGISTRY,
        "model_id": 1,
        "round": 1,
        "device": REGISTRY,
        "content_hash": bytes(32),
        "cid": CID,
        "sample_count": 1,
        "base_model_hash": bytes(32),
        "nonce": 0,
        field: value,
    }
    with pytest.raises(UsageError, match=message) as caught:
        eip712.commitment_digest(**kwargs)
    text = str(caught.value)
    assert repr(value) in text or str(value) in text, f"value not named: {text}"


# ---------------------------------------------------------------------------------
# Recovery
# ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    private_key=st.integers(1, N - 1),
    digest=hashes,
    v_form=st.sampled_from(["27-28", "0-1"]),
)
@example(1, bytes(32), "27-28")
@example(N - 1, b"\xff" * 32, "0-1")
def test_recover_address_matches_eth_account(
    private_key: int, digest: bytes, v_form: str
) -> None:
    signature = signed(private_key, digest)
    assert signature[64] in (27, 28)
    if v_form == "0-1":
        signature = signature[:64] + bytes([signature[64] - 27])
    expected = bytes.fromhex(
        Account.from_key(private_key.to_bytes(32, "big")).address[2:]
    )
    assert eth_account_address(digest, signature) == expected
    assert eip712.recover_address(digest, signature) == expected


@settings(max_examples=300, deadline=None)
@given(r_s=st.binary(min_size=64, max_size=64), v=st.sampled_from([0, 1, 27, 28]))
@example(bytes(64), 27)
@example(N.to_bytes(32, "big") + (1).to_bytes(32, "big"), 28)
@example(NOT_ON_CURVE.to_bytes(32, "big") + (1).to_bytes(32, "big"), 0)
def test_recover_address_agrees_on_arbitrary_bytes(r_s: bytes, v: int) -> None:
    """Either both paths recover the same address, or both reject the signature."""
    signature = r_s + bytes([v])
    digest = eth_hash_keccak(signature)
    if r_s[32:] > (N // 2).to_bytes(32, "big"):
        with pytest.raises(SignatureError, match="high s"):
            eip712.recover_address(digest, signature)
        return
    try:
        expected = eth_account_address(digest, signature)
    except BadSignature:
        with pytest.raises(SignatureError, match="signature is invalid"):
            eip712.recover_address(digest, signature)
        return
    assert eip712.recover_address(digest, signature) == expected


def test_recover_matches_recover_address() -> None:
    key = new_key()
    message = Commitment(1, 1, key.address, bytes(32), CID, 1, bytes(32)).message(
        chain_id=31337, model_registry=REGISTRY, nonce=0
    )
    signature = eip712.sign(message, key)
    assert eip712.recover(message, signature) == key.address
    assert eip712.recover_address(eip712.digest(message), signature) == bytes.fromhex(
        key.address[2:]
    )


def test_recover_address_rejects_high_s() -> None:
    digest = bytes(range(32))
    signature = signed(12345, digest)
    malleated = eip712.malleate(signature)
    # The high-s twin is a valid ECDSA signature of the same key.
    assert eth_account_address(digest, malleated) == eth_account_address(
        digest, signature
    )
    with pytest.raises(SignatureError, match="high s") as caught:
        eip712.recover_address(digest, malleated)
    assert malleated[32:64].hex() in str(caught.value)


def test_recover_address_accepts_max_low_s() -> None:
    """s = (N - 1) / 2 is the largest s that EIP-2 allows."""
    digest = bytes(range(32))
    signature = signed(12345, digest)
    s = int.from_bytes(signature[32:64], "big")
    half = (N // 2).to_bytes(32, "big")
    assert s <= N // 2
    # The maximum s is accepted by the form check whatever r is.
    boundary = signature[:32] + half + signature[64:]
    try:
        eip712.recover_address(digest, boundary)
    except SignatureError as exc:
        assert "high s" not in str(exc)
    one_above = signature[:32] + (N // 2 + 1).to_bytes(32, "big") + signature[64:]
    with pytest.raises(SignatureError, match="high s"):
        eip712.recover_address(digest, one_above)


@pytest.mark.parametrize("v", [2, 3, 26, 29, 255])
def test_recover_address_rejects_invalid_v(v: int) -> None:
    digest = bytes(range(32))
    signature = signed(12345, digest)[:64] + bytes([v])
    with pytest.raises(SignatureError, match=f"recovery id v={v} is invalid"):
        eip712.recover_address(digest, signature)


@pytest.mark.parametrize("length", [0, 1, 64, 66, 130])
def test_recover_address_rejects_wrong_length(length: int) -> None:
    digest = bytes(range(32))
    signature = (signed(12345, digest) * 2)[:length]
    with pytest.raises(SignatureError, match=f"65 bytes .*got {length} bytes"):
        eip712.recover_address(digest, signature)


@pytest.mark.parametrize(
    ("r", "s"),
    [
        (0, 1),
        (1, 0),
        (N, 1),
        (UINT256_MAX, 1),
        (NOT_ON_CURVE, 1),
    ],
    ids=["r-zero", "s-zero", "r-order", "r-max", "r-not-on-curve"],
)
@pytest.mark.parametrize("v", [0, 1, 27, 28])
def test_recover_address_rejects_invalid_point(r: int, s: int, v: int) -> None:
    digest = bytes(range(32))
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])
    with pytest.raises(BadSignature):
        eth_account_address(digest, signature)
    with pytest.raises(SignatureError, match="signature is invalid") as caught:
        eip712.recover_address(digest, signature)
    assert f"r=0x{r:064x}" in str(caught.value)
    assert f"v={v}" in str(caught.value)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_recover_address_rejects_wrong_digest_length(length: int) -> None:
    signature = signed(12345, bytes(32))
    with pytest.raises(UsageError, match=f"digest must be 32 bytes, got {length}"):
        eip712.recover_address(bytes(length), signature)


def test_recover_rejects_invalid_point() -> None:
    message = Commitment(1, 1, REGISTRY, bytes(32), CID, 1, bytes(32)).message(
        chain_id=31337, model_registry=REGISTRY, nonce=0
    )
    signature = (0).to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\x1b"
    with pytest.raises(SignatureError, match="signature is invalid"):
        eip712.recover(message, signature)


# ---------------------------------------------------------------------------------
# Native primitives
# ---------------------------------------------------------------------------------


def test_native_fast_paths_loaded() -> None:
    """Both primitives use the C interfaces, because a fallback only logs a warning."""
    assert native.keccak256 is not native._eth_hash_keccak256
    assert native.recover_public_key is not native._coincurve_recover


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2_000))
@example(b"")
@example(bytes(135))
@example(bytes(136))
@example(bytes(511))
@example(bytes(512))
def test_keccak256_matches_eth_hash(data: bytes) -> None:
    assert native.keccak256(data) == eth_hash_keccak(data)
    assert native._eth_hash_keccak256(data) == eth_hash_keccak(data)


@settings(max_examples=100, deadline=None)
@given(private_key=st.integers(1, N - 1), digest=hashes)
def test_recover_public_key_matches_coincurve(private_key: int, digest: bytes) -> None:
    key = coincurve.PrivateKey.from_int(private_key)
    signature = key.sign_recoverable(digest, hasher=None)
    expected = key.public_key.format(compressed=False)[1:]
    direct = native.recover_public_key(digest, signature[:64], signature[64])
    fallback = native._coincurve_recover(digest, signature[:64], signature[64])
    assert direct == expected
    assert fallback == expected


@pytest.mark.parametrize(
    "recover", [native.recover_public_key, native._coincurve_recover]
)
@pytest.mark.parametrize(
    ("digest", "signature", "recovery_id"),
    [
        (bytes(31), bytes(64), 0),
        (bytes(32), bytes(63), 0),
        (bytes(32), bytes(64), 2),
        (bytes(32), bytes(64), -1),
    ],
    ids=["short-digest", "short-signature", "recovery-id-2", "recovery-id-negative"],
)
def test_recover_public_key_rejects_invalid_arguments(
    recover: Any, digest: bytes, signature: bytes, recovery_id: int
) -> None:
    with pytest.raises(ValueError, match="expected a 32-byte digest"):
        recover(digest, signature, recovery_id)


def test_native_primitives_thread_safe() -> None:
    """Threads use their own C buffers, so concurrent calls return correct results."""
    cases = []
    for index in range(1, 41):
        key = coincurve.PrivateKey.from_int(index)
        digest = eth_hash_keccak(index.to_bytes(4, "big"))
        signature = key.sign_recoverable(digest, hasher=None)
        cases.append((digest, signature, key.public_key.format(compressed=False)[1:]))
    failures: list[str] = []

    def work() -> None:
        for _ in range(25):
            for digest, signature, public_key in cases:
                if native.keccak256(digest * 5) != eth_hash_keccak(digest * 5):
                    failures.append("keccak256")
                recovered = native.recover_public_key(
                    digest, signature[:64], signature[64]
                )
                if recovered != public_key:
                    failures.append("recover_public_key")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# ---------------------------------------------------------------------------------
# The aggregator's signature check
# ---------------------------------------------------------------------------------


def commitment_row(
    commitment: Commitment, nonce: int, signature: bytes
) -> CommitmentRow:
    return CommitmentRow(
        tx_hash="0x" + bytes(32).hex(),
        log_index=0,
        block=2,
        model_id=commitment.model_id,
        round=commitment.round,
        device=commitment.device,
        content_hash="0x" + commitment.content_hash.hex(),
        cid=commitment.cid,
        sample_count=commitment.sample_count,
        base_model_hash="0x" + commitment.base_model_hash.hex(),
        nonce=nonce,
        signer=commitment.device,
        signature="0x" + signature.hex(),
        status="pending",
    )


def offline_system(chain_id: int = 31337) -> Any:
    """Return the two attributes of a System that the signature check reads."""
    return SimpleNamespace(
        client=SimpleNamespace(chain_id=chain_id),
        deployment=SimpleNamespace(model_registry=REGISTRY),
    )


@pytest.mark.parametrize(
    ("case", "reason_text"),
    [
        ("valid", None),
        ("valid-v-0-1", None),
        ("other-key", "signed by"),
        ("other-nonce", "signed by"),
        ("high-s", "high s"),
        ("bad-v", "recovery id v=29 is invalid"),
        ("short", "65 bytes"),
        ("not-on-curve", "signature is invalid"),
    ],
)
def test_aggregator_signature_check(case: str, reason_text: str | None) -> None:
    device = new_key()
    commitment = Commitment(3, 4, device.address, b"\x05" * 32, CID, 6, b"\x07" * 32)
    message = commitment.message(chain_id=31337, model_registry=REGISTRY, nonce=8)
    signature = eip712.sign(message, device)
    nonce = 8
    if case == "valid-v-0-1":
        signature = signature[:64] + bytes([signature[64] - 27])
    elif case == "other-key":
        signature = eip712.sign(message, new_key())
    elif case == "other-nonce":
        nonce = 9
    elif case == "high-s":
        signature = eip712.malleate(signature)
    elif case == "bad-v":
        signature = signature[:64] + bytes([29])
    elif case == "short":
        signature = signature[:64]
    elif case == "not-on-curve":
        signature = NOT_ON_CURVE.to_bytes(32, "big") + signature[32:]
    row = commitment_row(commitment, nonce, signature)
    verdict = verify._check_signature(offline_system(), row, device.address)
    if reason_text is None:
        assert verdict.ok, verdict
        return
    assert verdict.reason is Reason.BAD_SIGNATURE
    assert reason_text in verdict.detail
