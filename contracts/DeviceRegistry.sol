// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

import {IEthereumDIDRegistry} from "./interfaces/IEthereumDIDRegistry.sol";
import {Signatures} from "./libraries/Signatures.sol";

/// @title Registry of IoT devices: enrolment, status, roles, segment and attested credentials
/// @notice A device is identified by its `did:ethr` address. Its signing key is the identity's current owner in
/// the ERC-1056 EthereumDIDRegistry, so a key rotated there is rotated here too and the DID stays the same.
/// Revocation is enforced here and is final, which ERC-1056 alone cannot express.
contract DeviceRegistry is AccessControl, EIP712 {
    /// @notice Role of operators who enrol devices and change their status, roles, segment and key.
    bytes32 public constant REGISTRAR_ROLE = keccak256("REGISTRAR_ROLE");
    /// @notice Role of the keys whose attestation statements the registry accepts.
    bytes32 public constant ATTESTOR_ROLE = keccak256("ATTESTOR_ROLE");

    /// @notice Device role bit for devices that may train and submit model updates.
    uint16 public constant ROLE_TRAINER = 1;

    bytes32 private constant _ENROLMENT_TYPEHASH = keccak256(
        "Enrolment(address device,uint16 roles,uint32 segment,string metadataCid,uint64 deadline,address registrar)"
    );
    bytes32 private constant _ATTESTATION_TYPEHASH = keccak256(
        "Attestation(address device,bytes32 measurement,uint64 issuedAt,uint64 expiresAt)"
    );
    bytes32 private constant _KEY_ROTATION_TYPEHASH = keccak256(
        "KeyRotation(address device,address newKey,uint64 deadline)"
    );

    /// @notice Lifecycle of a device. Revoked is final.
    enum Status {
        None,
        Active,
        Suspended,
        Revoked
    }

    /// @notice Everything a commitment check needs, packed into one storage slot.
    struct Device {
        Status status;
        uint16 roles;
        uint32 segment;
        uint64 credentialExpiresAt;
        uint64 attestedAt;
        // Bound into every commitment signature; moved on by increaseNonce to void unsubmitted signatures.
        uint64 nonce;
    }

    /// @notice The ERC-1056 registry that holds each device's current key.
    IEthereumDIDRegistry public immutable didRegistry;

    mapping(address device => Device) private _devices;
    mapping(address device => bytes32) private _measurements;
    mapping(address device => bytes32) private _metadataHashes;

    /// @notice The device is already enrolled (in any status).
    error DeviceAlreadyEnrolled(address device, Status status);
    /// @notice The device has never been enrolled.
    error DeviceNotEnrolled(address device);
    /// @notice The device is revoked, which is final.
    error DeviceIsRevoked(address device);
    /// @notice The status change is not allowed from the device's current status.
    error StatusTransitionInvalid(address device, Status from, Status to);
    /// @notice A signed message was submitted after its deadline.
    error SignatureExpired(uint64 deadline, uint256 timestamp);
    /// @notice The signature was made by another key than the one required.
    error SignerMismatch(address expected, address recovered);
    /// @notice The attestation statement was not signed by a key with ATTESTOR_ROLE.
    error SignerNotAttestor(address recovered);
    /// @notice The attestation statement is not newer than the one already stored.
    error AttestationNotNewer(uint64 issuedAt, uint64 storedIssuedAt);
    /// @notice The attestation statement has already expired, or claims to be issued in the future.
    error AttestationTimeInvalid(uint64 issuedAt, uint64 expiresAt, uint256 timestamp);
    /// @notice The new key is zero or equal to the current key.
    error NewKeyInvalid(address device, address newKey);
    /// @notice The ERC-1056 registry did not record the new key after the rotation.
    error KeyRotationFailed(address device, address expected, address actual);
    /// @notice A zero address was given where a device or contract address is required.
    error ZeroAddress();
    /// @notice The caller is neither the device's current key nor a registrar.
    error NotDeviceKeyOrRegistrar(address device, address caller);

    /// @notice Emitted when a registrar enrols a device that proved possession of its key.
    event DeviceEnrolled(
        address indexed device,
        address indexed registrar,
        uint16 roles,
        uint32 segment,
        string metadataCid
    );
    /// @notice Emitted when a device moves between Active, Suspended and Revoked.
    event DeviceStatusChanged(address indexed device, Status from, Status to, address indexed registrar);
    /// @notice Emitted when a device's role bitmask changes.
    event DeviceRolesChanged(address indexed device, uint16 roles, address indexed registrar);
    /// @notice Emitted when a device moves to another network segment.
    event DeviceSegmentChanged(address indexed device, uint32 segment, address indexed registrar);
    /// @notice Emitted when a device's metadata document changes.
    event DeviceMetadataChanged(address indexed device, string metadataCid, address indexed registrar);
    /// @notice Emitted when an attestor's statement about a device is stored.
    event DeviceAttested(
        address indexed device,
        address indexed attestor,
        bytes32 measurement,
        uint64 issuedAt,
        uint64 expiresAt
    );
    /// @notice Emitted when a device's signature nonce moves on, voiding its unsubmitted signatures.
    event DeviceNonceIncreased(address indexed device, uint64 nonce);
    /// @notice Emitted when a device's key is rotated through this registry.
    event DeviceKeyRotated(address indexed device, address oldKey, address newKey, address indexed registrar);

    /// @param didRegistry_ The deployed ERC-1056 EthereumDIDRegistry.
    /// @param admin The account that holds DEFAULT_ADMIN_ROLE and grants the other roles.
    constructor(IEthereumDIDRegistry didRegistry_, address admin) EIP712("ztfm DeviceRegistry", "1") {
        if (address(didRegistry_) == address(0) || admin == address(0)) revert ZeroAddress();
        didRegistry = didRegistry_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    // ----------------------------------------------------------------------------------------------------------------
    // Registrar actions
    // ----------------------------------------------------------------------------------------------------------------

    /// @notice Enrols `device` as Active, with the device's own signature as proof that it holds its key.
    /// @dev The device signs an EIP-712 `Enrolment` that names this registrar, so a proof cannot be reused by
    /// another registrar. The metadata CID is kept in the event; storage holds its keccak256 only.
    /// Requirements: caller has REGISTRAR_ROLE; the device was never enrolled; `block.timestamp <= deadline`;
    /// `deviceSignature` is by the device's current ERC-1056 key.
    /// Emits {DeviceEnrolled}.
    /// @param device The device's DID address.
    /// @param roles The device role bitmask, such as ROLE_TRAINER.
    /// @param segment The network segment the device belongs to.
    /// @param metadataCid The CID of the device's metadata document.
    /// @param deadline The last timestamp at which the proof is accepted.
    /// @param deviceSignature The device's 65-byte signature of the `Enrolment` message.
    function enrol(
        address device,
        uint16 roles,
        uint32 segment,
        string calldata metadataCid,
        uint64 deadline,
        bytes calldata deviceSignature
    ) external onlyRole(REGISTRAR_ROLE) {
        if (device == address(0)) revert ZeroAddress();
        Device storage record = _devices[device];
        if (record.status != Status.None) revert DeviceAlreadyEnrolled(device, record.status);
        if (block.timestamp > deadline) revert SignatureExpired(deadline, block.timestamp);
        bytes32 structHash = keccak256(
            abi.encode(_ENROLMENT_TYPEHASH, device, roles, segment, keccak256(bytes(metadataCid)), deadline, msg.sender)
        );
        _requireSigner(didRegistry.identityOwner(device), _hashTypedDataV4(structHash), deviceSignature);

        record.status = Status.Active;
        record.roles = roles;
        record.segment = segment;
        _metadataHashes[device] = keccak256(bytes(metadataCid));
        emit DeviceEnrolled(device, msg.sender, roles, segment, metadataCid);
    }

    /// @notice Suspends an Active device: it can no longer commit updates until reinstated.
    /// @dev Requirements: caller has REGISTRAR_ROLE; the device is Active. Emits {DeviceStatusChanged}.
    /// @param device The device's DID address.
    function suspend(address device) external onlyRole(REGISTRAR_ROLE) {
        _transition(device, Status.Active, Status.Suspended);
    }

    /// @notice Returns a Suspended device to Active.
    /// @dev Requirements: caller has REGISTRAR_ROLE; the device is Suspended. Emits {DeviceStatusChanged}.
    /// @param device The device's DID address.
    function reinstate(address device) external onlyRole(REGISTRAR_ROLE) {
        _transition(device, Status.Suspended, Status.Active);
    }

    /// @notice Revokes an Active or Suspended device for good.
    /// @dev Requirements: caller has REGISTRAR_ROLE; the device is Active or Suspended.
    /// Emits {DeviceStatusChanged}.
    /// @param device The device's DID address.
    function revoke(address device) external onlyRole(REGISTRAR_ROLE) {
        Status from = _devices[device].status;
        if (from != Status.Active && from != Status.Suspended) {
            revert StatusTransitionInvalid(device, from, Status.Revoked);
        }
        _devices[device].status = Status.Revoked;
        emit DeviceStatusChanged(device, from, Status.Revoked, msg.sender);
    }

    /// @notice Replaces a device's role bitmask.
    /// @dev Requirements: caller has REGISTRAR_ROLE; the device is enrolled and not revoked.
    /// Emits {DeviceRolesChanged} when the roles differ.
    /// @param device The device's DID address.
    /// @param roles The new role bitmask.
    function setRoles(address device, uint16 roles) external onlyRole(REGISTRAR_ROLE) {
        Device storage record = _liveDevice(device);
        if (record.roles == roles) return;
        record.roles = roles;
        emit DeviceRolesChanged(device, roles, msg.sender);
    }

    /// @notice Moves a device to another network segment.
    /// @dev Requirements: caller has REGISTRAR_ROLE; the device is enrolled and not revoked.
    /// Emits {DeviceSegmentChanged} when the segment differs.
    /// @param device The device's DID address.
    /// @param segment The new segment id.
    function setSegment(address device, uint32 segment) external onlyRole(REGISTRAR_ROLE) {
        Device storage record = _liveDevice(device);
        if (record.segment == segment) return;
        record.segment = segment;
        emit DeviceSegmentChanged(device, segment, msg.sender);
    }

    /// @notice Replaces the CID of a device's metadata document.
    /// @dev Requirements: caller has REGISTRAR_ROLE; the device is enrolled and not revoked.
    /// Emits {DeviceMetadataChanged} when the CID differs.
    /// @param device The device's DID address.
    /// @param metadataCid The new metadata CID.
    function setMetadata(address device, string calldata metadataCid) external onlyRole(REGISTRAR_ROLE) {
        _liveDevice(device);
        bytes32 metadataHash = keccak256(bytes(metadataCid));
        if (_metadataHashes[device] == metadataHash) return;
        _metadataHashes[device] = metadataHash;
        emit DeviceMetadataChanged(device, metadataCid, msg.sender);
    }

    /// @notice Rotates a device's key in the ERC-1056 registry, with the consent of both the old and the new key.
    /// @dev The old key's consent is an ERC-1056 `changeOwnerSigned` signature, checked by that registry; the new
    /// key proves possession with an EIP-712 `KeyRotation` signature. The DID does not change.
    /// Requirements: caller has REGISTRAR_ROLE; the device is enrolled and not revoked; `newKey` is neither zero
    /// nor the current key; `block.timestamp <= deadline`.
    /// Emits {DeviceKeyRotated}.
    /// @param device The device's DID address.
    /// @param newKey The new signing key.
    /// @param deadline The last timestamp at which the new key's proof is accepted.
    /// @param newKeySignature The new key's 65-byte signature of the `KeyRotation` message.
    /// @param oldKeyV The `v` of the current key's ERC-1056 `changeOwnerSigned` signature.
    /// @param oldKeyR The `r` of that signature.
    /// @param oldKeyS The `s` of that signature.
    function rotateKey(
        address device,
        address newKey,
        uint64 deadline,
        bytes calldata newKeySignature,
        uint8 oldKeyV,
        bytes32 oldKeyR,
        bytes32 oldKeyS
    ) external onlyRole(REGISTRAR_ROLE) {
        _liveDevice(device);
        address oldKey = didRegistry.identityOwner(device);
        if (newKey == address(0) || newKey == oldKey) revert NewKeyInvalid(device, newKey);
        if (block.timestamp > deadline) revert SignatureExpired(deadline, block.timestamp);
        bytes32 structHash = keccak256(abi.encode(_KEY_ROTATION_TYPEHASH, device, newKey, deadline));
        _requireSigner(newKey, _hashTypedDataV4(structHash), newKeySignature);

        didRegistry.changeOwnerSigned(device, oldKeyV, oldKeyR, oldKeyS, newKey);
        address actual = didRegistry.identityOwner(device);
        if (actual != newKey) revert KeyRotationFailed(device, newKey, actual);
        emit DeviceKeyRotated(device, oldKey, newKey, msg.sender);
    }

    // ----------------------------------------------------------------------------------------------------------------
    // Attestation
    // ----------------------------------------------------------------------------------------------------------------

    /// @notice Stores an attestor's signed statement that `device` runs firmware or an enclave with `measurement`,
    /// valid until `expiresAt`. Anyone may relay the statement.
    /// @dev Requirements: the device is enrolled and not revoked; the signer holds ATTESTOR_ROLE;
    /// `issuedAt <= block.timestamp < expiresAt`; `issuedAt` is later than the stored statement's.
    /// Emits {DeviceAttested}.
    /// @param device The device's DID address.
    /// @param measurement The firmware or enclave measurement hash.
    /// @param issuedAt When the attestor issued the statement.
    /// @param expiresAt When the credential expires.
    /// @param attestorSignature The attestor's 65-byte signature of the `Attestation` message.
    function attest(
        address device,
        bytes32 measurement,
        uint64 issuedAt,
        uint64 expiresAt,
        bytes calldata attestorSignature
    ) external {
        Device storage record = _liveDevice(device);
        if (issuedAt > block.timestamp || expiresAt <= block.timestamp) {
            revert AttestationTimeInvalid(issuedAt, expiresAt, block.timestamp);
        }
        if (issuedAt <= record.attestedAt) revert AttestationNotNewer(issuedAt, record.attestedAt);
        bytes32 structHash = keccak256(abi.encode(_ATTESTATION_TYPEHASH, device, measurement, issuedAt, expiresAt));
        address attestor = Signatures.recover(_hashTypedDataV4(structHash), attestorSignature);
        if (!hasRole(ATTESTOR_ROLE, attestor)) revert SignerNotAttestor(attestor);

        record.attestedAt = issuedAt;
        record.credentialExpiresAt = expiresAt;
        _measurements[device] = measurement;
        emit DeviceAttested(device, attestor, measurement, issuedAt, expiresAt);
    }

    // ----------------------------------------------------------------------------------------------------------------
    // Used by the ModelRegistry
    // ----------------------------------------------------------------------------------------------------------------

    /// @notice Voids every commitment signature the device has made but nobody has submitted yet, by moving
    /// its signature nonce on. Commitments already on chain are unaffected.
    /// @dev Requirements: caller is the device's current key or has REGISTRAR_ROLE; the device is enrolled and
    /// not revoked. Emits {DeviceNonceIncreased}.
    /// @param device The device's DID address.
    function increaseNonce(address device) external {
        Device storage record = _liveDevice(device);
        if (msg.sender != didRegistry.identityOwner(device) && !hasRole(REGISTRAR_ROLE, msg.sender)) {
            revert NotDeviceKeyOrRegistrar(device, msg.sender);
        }
        uint64 nonce = record.nonce + 1;
        record.nonce = nonce;
        emit DeviceNonceIncreased(device, nonce);
    }

    // ----------------------------------------------------------------------------------------------------------------
    // Views
    // ----------------------------------------------------------------------------------------------------------------

    /// @notice Returns the stored record of `device` (all zero when never enrolled).
    /// @param device The device's DID address.
    /// @return The packed device record.
    function deviceOf(address device) external view returns (Device memory) {
        return _devices[device];
    }

    /// @notice Returns the device record together with its current key, in one call.
    /// @param device The device's DID address.
    /// @return record The packed device record.
    /// @return key The device's current ERC-1056 key.
    function deviceWithKey(address device) external view returns (Device memory record, address key) {
        return (_devices[device], didRegistry.identityOwner(device));
    }

    /// @notice Returns the device records of many devices in one call, for caches and audits.
    /// @param devices The devices' DID addresses.
    /// @return records One record per device, in the same order.
    /// @return keys The devices' current ERC-1056 keys, in the same order.
    function devicesOf(
        address[] calldata devices
    ) external view returns (Device[] memory records, address[] memory keys) {
        records = new Device[](devices.length);
        keys = new address[](devices.length);
        for (uint256 i = 0; i < devices.length; ++i) {
            records[i] = _devices[devices[i]];
            keys[i] = didRegistry.identityOwner(devices[i]);
        }
    }

    /// @notice Returns the device's current signing key, its ERC-1056 owner.
    /// @param device The device's DID address.
    /// @return The current key.
    function keyOf(address device) external view returns (address) {
        return didRegistry.identityOwner(device);
    }

    /// @notice Returns the last attested measurement of `device` (zero when never attested).
    /// @param device The device's DID address.
    /// @return The measurement hash.
    function measurementOf(address device) external view returns (bytes32) {
        return _measurements[device];
    }

    /// @notice Returns the keccak256 of the device's metadata CID; the CID itself is in the events.
    /// @param device The device's DID address.
    /// @return The hash of the metadata CID string.
    function metadataHashOf(address device) external view returns (bytes32) {
        return _metadataHashes[device];
    }

    /// @notice Tells whether `device` is Active with an unexpired attested credential now.
    /// @param device The device's DID address.
    /// @return True when the device may take part now.
    function isCredentialValid(address device) external view returns (bool) {
        Device storage record = _devices[device];
        return record.status == Status.Active && record.credentialExpiresAt > block.timestamp;
    }

    /// @notice Returns the EIP-712 digest a device signs to be enrolled by `registrar`.
    /// @return The digest, for clients that check their own encoding against the contract's.
    function enrolmentDigest(
        address device,
        uint16 roles,
        uint32 segment,
        string calldata metadataCid,
        uint64 deadline,
        address registrar
    ) external view returns (bytes32) {
        return
            _hashTypedDataV4(
                keccak256(
                    abi.encode(
                        _ENROLMENT_TYPEHASH,
                        device,
                        roles,
                        segment,
                        keccak256(bytes(metadataCid)),
                        deadline,
                        registrar
                    )
                )
            );
    }

    /// @notice Returns the EIP-712 digest an attestor signs for a statement about `device`.
    /// @return The digest.
    function attestationDigest(
        address device,
        bytes32 measurement,
        uint64 issuedAt,
        uint64 expiresAt
    ) external view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(_ATTESTATION_TYPEHASH, device, measurement, issuedAt, expiresAt)));
    }

    /// @notice Returns the EIP-712 digest a new key signs to prove possession during rotation.
    /// @return The digest.
    function keyRotationDigest(address device, address newKey, uint64 deadline) external view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(_KEY_ROTATION_TYPEHASH, device, newKey, deadline)));
    }

    // ----------------------------------------------------------------------------------------------------------------
    // Internal
    // ----------------------------------------------------------------------------------------------------------------

    function _transition(address device, Status from, Status to) private {
        Device storage record = _devices[device];
        if (record.status != from) revert StatusTransitionInvalid(device, record.status, to);
        record.status = to;
        emit DeviceStatusChanged(device, from, to, msg.sender);
    }

    function _liveDevice(address device) private view returns (Device storage record) {
        record = _devices[device];
        if (record.status == Status.None) revert DeviceNotEnrolled(device);
        if (record.status == Status.Revoked) revert DeviceIsRevoked(device);
    }

    function _requireSigner(address expected, bytes32 digest, bytes calldata signature) private pure {
        address recovered = Signatures.recover(digest, signature);
        if (recovered != expected) revert SignerMismatch(expected, recovered);
    }
}
