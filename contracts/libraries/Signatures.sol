// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title Strict recovery of 65-byte secp256k1 signatures
/// @notice Accepts `v` as 27/28 or 0/1 and rejects any other length, a high `s` (malleable) and an invalid
/// signature, each with a custom error that carries the offending value.
library Signatures {
    /// @notice The signature is not 65 bytes long.
    error SignatureLengthInvalid(uint256 length);
    /// @notice The signature's `s` is in the upper half of the curve order, so it is malleable.
    error SignatureHighS(bytes32 s);
    /// @notice The signature's `v` is none of 0, 1, 27 and 28.
    error SignatureRecoveryIdInvalid(uint8 v);
    /// @notice No address can be recovered from the signature.
    error SignatureInvalid();

    /// @notice Recovers the signer of `digest` from a 65-byte `r || s || v` signature.
    /// @param digest The EIP-712 digest that was signed.
    /// @param signature The signature, `v` as 0/1 or 27/28.
    /// @return signer The recovered address, never zero.
    function recover(bytes32 digest, bytes calldata signature) internal pure returns (address signer) {
        if (signature.length != 65) revert SignatureLengthInvalid(signature.length);
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (v < 27) v += 27;
        if (v != 27 && v != 28) revert SignatureRecoveryIdInvalid(uint8(signature[64]));
        (address recovered, ECDSA.RecoverError err, bytes32 errArg) = ECDSA.tryRecover(digest, v, r, s);
        if (err == ECDSA.RecoverError.InvalidSignatureS) revert SignatureHighS(errArg);
        if (err != ECDSA.RecoverError.NoError) revert SignatureInvalid();
        return recovered;
    }
}
