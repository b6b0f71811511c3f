"""Decode revert data into named Python exceptions.

Every custom error declared in the project's contracts (OpenZeppelin's included)
becomes a subclass of :class:`~ztfm_chain.exceptions.ContractError` with the same
name, created from the ABIs when this module is imported. Its ``arguments`` maps the
error's parameter names to the decoded values::

    from ztfm_chain.chain import errors

    try:
        client.transact(...)
    except errors.DeviceAlreadyEnrolled as exc:
        print(exc.arguments["device"], exc.arguments["status"])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address

from ztfm_chain.chain.artifacts import ALL_CONTRACTS, load_artifact
from ztfm_chain.exceptions import ContractError, TransactionReverted

_ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
_PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)


@dataclass(frozen=True)
class _ErrorSpec:
    contract: str
    name: str
    names: tuple[str, ...]
    types: tuple[str, ...]
    exception: type[ContractError]


def _abi_type(param: dict[str, Any]) -> str:
    if param["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param["components"])
        return f"({inner}){param['type'][5:]}"
    return str(param["type"])


def _build_registry() -> tuple[dict[bytes, _ErrorSpec], dict[str, type[ContractError]]]:
    by_selector: dict[bytes, _ErrorSpec] = {}
    classes: dict[str, type[ContractError]] = {}
    for contract in ALL_CONTRACTS:
        for entry in load_artifact(contract).abi:
            if entry.get("type") != "error":
                continue
            types = tuple(_abi_type(p) for p in entry["inputs"])
            selector = function_signature_to_4byte_selector(
                f"{entry['name']}({','.join(types)})"
            )
            if selector in by_selector:
                continue
            cls = classes.get(entry["name"])
            if cls is None:
                cls = type(
                    entry["name"],
                    (ContractError,),
                    {
                        "__doc__": f"Custom error {entry['name']} of {contract}.",
                        "__module__": __name__,
                        "error_name": entry["name"],
                        "contract_name": contract,
                    },
                )
                classes[entry["name"]] = cls
            by_selector[selector] = _ErrorSpec(
                contract=contract,
                name=entry["name"],
                names=tuple(p["name"] for p in entry["inputs"]),
                types=types,
                exception=cls,
            )
    return by_selector, classes


_BY_SELECTOR, CONTRACT_ERRORS = _build_registry()


def __getattr__(name: str) -> type[ContractError]:
    try:
        return CONTRACT_ERRORS[name]
    except KeyError:
        raise AttributeError(f"no contract error named {name!r}") from None


def decode_revert(data: bytes | str | None) -> ContractError | TransactionReverted:
    """Turn revert data into the matching exception (not raised).

    Known custom errors give their named :class:`ContractError` subclass; ``Error(string)``
    and ``Panic(uint256)`` and unknown data give :class:`TransactionReverted`.
    """
    raw = _to_bytes(data)
    if len(raw) < 4:
        return TransactionReverted(f"reverted without data (got {raw.hex() or 'none'})")
    selector, payload = raw[:4], raw[4:]
    if selector == _ERROR_STRING:
        (message,) = abi_decode(["string"], payload)
        return TransactionReverted(f"reverted: {message}")
    if selector == _PANIC:
        (code,) = abi_decode(["uint256"], payload)
        return TransactionReverted(f"reverted with panic code 0x{code:02x}")
    spec = _BY_SELECTOR.get(selector)
    if spec is None:
        return TransactionReverted(
            f"reverted with unknown custom error selector 0x{selector.hex()} "
            f"(data 0x{raw.hex()})"
        )
    values = abi_decode(list(spec.types), payload)
    arguments = {
        name or f"arg{i}": _readable(value, type_)
        for i, (name, value, type_) in enumerate(
            zip(spec.names, values, spec.types, strict=True)
        )
    }
    shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    return spec.exception(f"{spec.contract}.{spec.name}({shown})", arguments)


def _to_bytes(data: bytes | str | None) -> bytes:
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    text = data[2:] if data.startswith(("0x", "0X")) else data
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


def _readable(value: Any, type_: str) -> Any:
    if type_ == "address":
        return to_checksum_address(value)
    if type_.startswith("bytes") and isinstance(value, bytes):
        return "0x" + value.hex()
    return value
