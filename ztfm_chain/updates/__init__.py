"""Model-update codec: canonical safetensors encoding and strict decoding.

This package imports nothing from ztfm_chain except the exceptions, so devices and
aggregators can share it without pulling in chain or storage code.
"""

from ztfm_chain.updates.codec import (
    FORMAT_VERSION,
    MODEL_METADATA_KEYS,
    UPDATE_METADATA_KEYS,
    DecodedUpdate,
    UpdateKind,
    UpdateMeta,
    decode_model,
    decode_update,
    encode_model,
    encode_update,
    sha256_hex,
    state_dict_hash,
)
from ztfm_chain.updates.header import MAX_HEADER_BYTES, ParsedHeader, parse_header
from ztfm_chain.updates.schema import DTYPE_CODES, ModelSchema, TensorSpec, dtype_code

__all__ = [
    "DTYPE_CODES",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "MODEL_METADATA_KEYS",
    "UPDATE_METADATA_KEYS",
    "DecodedUpdate",
    "ModelSchema",
    "ParsedHeader",
    "TensorSpec",
    "UpdateKind",
    "UpdateMeta",
    "decode_model",
    "decode_update",
    "dtype_code",
    "encode_model",
    "encode_update",
    "parse_header",
    "sha256_hex",
    "state_dict_hash",
]
