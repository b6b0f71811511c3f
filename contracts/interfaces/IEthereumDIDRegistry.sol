// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title The part of the ERC-1056 EthereumDIDRegistry that ztfm-chain calls
/// @notice The registry itself is deployed from the `ethr-did-registry` npm package, unchanged.
interface IEthereumDIDRegistry {
    /// @notice Returns the current owner (controller key) of `identity`; the identity itself when never changed.
    function identityOwner(address identity) external view returns (address);

    /// @notice Changes the owner of `identity` with a signature by its current owner.
    function changeOwnerSigned(address identity, uint8 sigV, bytes32 sigR, bytes32 sigS, address newOwner) external;
}
