"""The closed list of reason codes an aggregator records for each commitment.

The numeric value is what the TrustRegistry stores with a score change, so the values
never change; new codes are appended.
"""

from __future__ import annotations

from enum import IntEnum


class Reason(IntEnum):
    """Verdict on a commitment: ACCEPTED, or the first check it failed."""

    #: Every check passed and the update was aggregated.
    ACCEPTED = 0
    #: The device was never enrolled in the DeviceRegistry.
    UNREGISTERED_DEVICE = 1
    #: The device was suspended when it committed, or is suspended at aggregation.
    DEVICE_SUSPENDED = 2
    #: The device was revoked when it committed, or was revoked before aggregation.
    DEVICE_REVOKED = 3
    #: The device had no valid attested credential at the commitment's block.
    CREDENTIAL_EXPIRED = 4
    #: The device lacks a role the model requires.
    ROLE_MISSING = 5
    #: The device's segment does not take part in the model.
    SEGMENT_NOT_ALLOWED = 6
    #: The device's trust score was below the model's minimum.
    TRUST_TOO_LOW = 7
    #: The signature is malformed, high-s, or not by the device's key at that block.
    BAD_SIGNATURE = 8
    #: The commitment names a round that was not the model's open round.
    WRONG_ROUND = 9
    #: The update was trained from another model than the round's base model.
    STALE_BASE_MODEL = 10
    #: The device already has a commitment in this round.
    DUPLICATE = 11
    #: The store did not serve the content before the round ended.
    CONTENT_UNAVAILABLE = 12
    #: The store served bytes whose CID is not the committed CID.
    CID_MISMATCH = 13
    #: The bytes' SHA-256 is not the committed content hash.
    HASH_MISMATCH = 14
    #: The update is larger than the model's maximum update size.
    TOO_LARGE = 15
    #: The bytes are not a valid safetensors update with the expected metadata.
    MALFORMED = 16
    #: Tensor names, shapes or dtypes differ from the model's.
    SCHEMA_MISMATCH = 17
    #: A tensor contains NaN or infinity.
    NON_FINITE = 18
    #: The sample count is not positive, exceeds the model's bound, or differs
    #: between the commitment and the update's metadata.
    BAD_SAMPLE_COUNT = 19
    #: Behavioural analytics flagged the update (cosine, norm ratio, distance or
    #: root-set loss).
    ANOMALOUS = 20
    #: The contract on chain is not the expected one (no code, wrong chain).
    WRONG_CHAIN = 21
    #: An operator set the score by hand with an aggregator key (``ztfm trust set``),
    #: for example to let a quarantined device commit again.
    OPERATOR_SET = 22
    #: The update passed every check, but the round's rule could not aggregate the
    #: updates (too few for Multi-Krum, or a sum that overflows), so the round fails.
    NOT_AGGREGATED = 23


#: Reasons that are not the device's fault, so they cost no trust.
NO_FAULT = frozenset(
    {
        Reason.ACCEPTED,
        Reason.CONTENT_UNAVAILABLE,
        Reason.TRUST_TOO_LOW,
        Reason.NOT_AGGREGATED,
    }
)
