// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

import {DeviceRegistry} from "./DeviceRegistry.sol";
import {TrustRegistry} from "./TrustRegistry.sol";
import {Signatures} from "./libraries/Signatures.sol";

/// @title Federated models, their training rounds and the devices' update commitments
/// @notice A model names its aggregators, the segments whose devices may train it and the bar a device must clear
/// (roles, trust). Each round trains from the global model hash recorded at its opening. A device commits to one
/// update per round, sent by itself or relayed by anyone with its EIP-712 signature; an aggregator finalizes the
/// round with the new global model, a digest of the accepted set and the CID of its verification report.
contract ModelRegistry is AccessControl, EIP712 {
    /// @notice Role of operators who may create models.
    bytes32 public constant MODEL_MANAGER_ROLE = keccak256("MODEL_MANAGER_ROLE");
    /// @notice Role an account needs before a model owner can name it as an aggregator.
    bytes32 public constant AGGREGATOR_ROLE = keccak256("AGGREGATOR_ROLE");

    bytes32 private constant _COMMITMENT_TYPEHASH = keccak256(
        "UpdateCommitment(uint256 modelId,uint64 round,address device,bytes32 contentHash,string cid,"
        "uint32 sampleCount,bytes32 baseModelHash,uint64 nonce)"
    );

    /// @notice Lifecycle of a round.
    enum RoundState {
        None,
        Open,
        Closed,
        Finalized,
        Failed
    }

    /// @notice Settings of a model that its owner can change.
    struct ModelParams {
        uint16 minTrust;
        uint16 requiredRoles;
        uint32 quorum;
        uint32 roundDuration;
        uint64 maxUpdateBytes;
        uint32 maxSampleCount;
        uint8 aggregationRule;
    }

    /// @notice One update commitment, as the device signs it (without the nonce, which the registry supplies).
    struct Commitment {
        uint256 modelId;
        uint64 round;
        address device;
        bytes32 contentHash;
        string cid;
        uint32 sampleCount;
        bytes32 baseModelHash;
    }

    struct Model {
        address owner;
        uint16 minTrust;
        uint16 requiredRoles;
        uint64 currentRound;
        uint64 maxUpdateBytes;
        uint32 maxSampleCount;
        uint32 quorum;
        uint32 roundDuration;
        uint8 aggregationRule;
        bytes32 baseModelHash;
        bytes32 globalModelHash;
        string baseModelCid;
        string globalModelCid;
    }

    struct Round {
        uint64 openedAt;
        uint64 deadline;
        RoundState state;
        uint32 acceptedCount;
        bytes32 baseModelHash;
        bytes32 newModelHash;
        bytes32 acceptedDigest;
        bytes32 reportHash;
    }

    /// @notice The registry of devices, their status, segment, roles and keys.
    DeviceRegistry public immutable devices;
    /// @notice The registry of trust scores.
    TrustRegistry public immutable trust;

    uint256 private _modelCount;
    mapping(uint256 modelId => Model) private _models;
    mapping(uint256 modelId => mapping(address account => bool)) private _aggregators;
    mapping(uint256 modelId => mapping(uint32 segment => bool)) private _segments;
    mapping(uint256 modelId => mapping(uint64 round => Round)) private _rounds;
    mapping(bytes32 key => bytes32 commitmentHash) private _commitments;

    /// @notice No model has this id.
    error ModelNotFound(uint256 modelId);
    /// @notice The caller is not the model's owner.
    error NotModelOwner(uint256 modelId, address account);
    /// @notice The caller is neither the model's owner nor one of its aggregators.
    error NotModelOperator(uint256 modelId, address account);
    /// @notice The caller is not one of the model's aggregators.
    error NotModelAggregator(uint256 modelId, address account);
    /// @notice The account does not hold AGGREGATOR_ROLE.
    error AccountNotAggregator(address account);
    /// @notice A model parameter is out of range.
    error ModelParamInvalid(string name, uint256 value);
    /// @notice The round is not the model's current one.
    error RoundNotCurrent(uint256 modelId, uint64 round, uint64 currentRound);
    /// @notice The round is not in the state the action needs.
    error RoundStateInvalid(uint256 modelId, uint64 round, RoundState state);
    /// @notice The round's deadline has passed, so it takes no more commitments.
    error RoundDeadlinePassed(uint256 modelId, uint64 round, uint64 deadline, uint256 timestamp);
    /// @notice The round is still open before its deadline, so it cannot be finalized yet.
    error RoundStillOpen(uint256 modelId, uint64 round, uint64 deadline, uint256 timestamp);
    /// @notice The device is not Active.
    error DeviceNotActive(address device, DeviceRegistry.Status status);
    /// @notice The device's attested credential has expired or was never issued.
    error CredentialExpired(address device, uint64 expiresAt, uint256 timestamp);
    /// @notice The device lacks a role the model requires.
    error DeviceRoleMissing(address device, uint16 roles, uint16 requiredRoles);
    /// @notice The device's segment does not take part in the model.
    error SegmentNotAllowed(uint256 modelId, address device, uint32 segment);
    /// @notice The device's trust score is below the model's minimum.
    error TrustTooLow(address device, uint16 score, uint16 minTrust);
    /// @notice A direct commitment came from another account than the device's current key.
    error CallerNotDeviceKey(address device, address key, address caller);
    /// @notice The signature was made by another key than the device's current key.
    error SignerMismatch(address expected, address recovered);
    /// @notice The device already committed an update to this round.
    error AlreadyCommitted(uint256 modelId, uint64 round, address device);
    /// @notice A zero address was given where an account or contract is required.
    error ZeroAddress();

    /// @notice Emitted when a model is created.
    event ModelCreated(
        uint256 indexed modelId,
        address indexed owner,
        bytes32 baseModelHash,
        string baseModelCid,
        ModelParams params
    );
    /// @notice Emitted when a model's owner changes its parameters.
    event ModelParamsChanged(uint256 indexed modelId, ModelParams params);
    /// @notice Emitted when an account is added to or removed from a model's aggregators.
    event ModelAggregatorChanged(uint256 indexed modelId, address indexed account, bool enabled);
    /// @notice Emitted when a segment is allowed in or removed from a model.
    event ModelSegmentChanged(uint256 indexed modelId, uint32 indexed segment, bool allowed);
    /// @notice Emitted when a round opens.
    event RoundOpened(uint256 indexed modelId, uint64 indexed round, bytes32 baseModelHash, uint64 deadline);
    /// @notice Emitted when an aggregator closes a round before its deadline.
    event RoundClosed(uint256 indexed modelId, uint64 indexed round, address indexed aggregator);
    /// @notice Emitted when a device commits to an update.
    event UpdateCommitted(
        uint256 indexed modelId,
        uint64 indexed round,
        address indexed device,
        bytes32 contentHash,
        string cid,
        uint32 sampleCount,
        bytes32 baseModelHash,
        uint64 nonce,
        address signer,
        bytes signature
    );
    /// @notice Emitted when a round reached its quorum and produced a new global model.
    event RoundFinalized(
        uint256 indexed modelId,
        uint64 indexed round,
        bytes32 newModelHash,
        string newModelCid,
        bytes32 acceptedDigest,
        uint32 acceptedCount,
        bytes32 reportHash,
        string reportCid,
        address indexed aggregator
    );
    /// @notice Emitted when a round ended below its quorum; the global model is unchanged.
    event RoundFailed(
        uint256 indexed modelId,
        uint64 indexed round,
        uint32 acceptedCount,
        uint32 quorum,
        bytes32 reportHash,
        string reportCid,
        address indexed aggregator
    );

    /// @param devices_ The DeviceRegistry.
    /// @param trust_ The TrustRegistry.
    /// @param admin The account that holds DEFAULT_ADMIN_ROLE and grants the other roles.
    constructor(DeviceRegistry devices_, TrustRegistry trust_, address admin) EIP712("ztfm ModelRegistry", "1") {
        if (address(devices_) == address(0) || address(trust_) == address(0) || admin == address(0)) {
            revert ZeroAddress();
        }
        devices = devices_;
        trust = trust_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    // ----------------------------------------------------------------------------------------------------------------
    // Models
    // ----------------------------------------------------------------------------------------------------------------

    /// @notice Creates a model owned by the caller, starting from a foundation model.
    /// @dev Requirements: caller has MODEL_MANAGER_ROLE; parameters in range; every aggregator holds
    /// AGGREGATOR_ROLE. Emits {ModelCreated}, then {ModelSegmentChanged} and {ModelAggregatorChanged} per entry.
    /// @param baseModelHash SHA-256 of the foundation model's bytes.
    /// @param baseModelCid CID of the foundation model.
    /// @param params The model's parameters.
    /// @param segments The segments whose devices may train the model.
    /// @param aggregators The accounts that may aggregate and finalize rounds.
    /// @return modelId The new model's id, counted from 1.
    function createModel(
        bytes32 baseModelHash,
        string calldata baseModelCid,
        ModelParams calldata params,
        uint32[] calldata segments,
        address[] calldata aggregators
    ) external onlyRole(MODEL_MANAGER_ROLE) returns (uint256 modelId) {
        _checkParams(params);
        modelId = ++_modelCount;
        Model storage model = _models[modelId];
        model.owner = msg.sender;
        model.baseModelHash = baseModelHash;
        model.globalModelHash = baseModelHash;
        model.baseModelCid = baseModelCid;
        model.globalModelCid = baseModelCid;
        _storeParams(model, params);
        emit ModelCreated(modelId, msg.sender, baseModelHash, baseModelCid, params);
        for (uint256 i = 0; i < segments.length; ++i) {
            _setSegment(modelId, segments[i], true);
        }
        for (uint256 i = 0; i < aggregators.length; ++i) {
            _setAggregator(modelId, aggregators[i], true);
        }
    }

    /// @notice Replaces a model's parameters; a round already open keeps its deadline.
    /// @dev Requirements: caller owns the model; parameters in range. Emits {ModelParamsChanged}.
    /// @param modelId The model.
    /// @param params The new parameters.
    function setModelParams(uint256 modelId, ModelParams calldata params) external {
        Model storage model = _ownedModel(modelId);
        _checkParams(params);
        _storeParams(model, params);
        emit ModelParamsChanged(modelId, params);
    }

    /// @notice Adds or removes an aggregator of a model.
    /// @dev Requirements: caller owns the model; an added account holds AGGREGATOR_ROLE.
    /// Emits {ModelAggregatorChanged} when the set changes.
    /// @param modelId The model.
    /// @param account The aggregator account.
    /// @param enabled True to add, false to remove.
    function setAggregator(uint256 modelId, address account, bool enabled) external {
        _ownedModel(modelId);
        _setAggregator(modelId, account, enabled);
    }

    /// @notice Allows or disallows the devices of a segment to train a model.
    /// @dev Requirements: caller owns the model. Emits {ModelSegmentChanged} when the set changes.
    /// @param modelId The model.
    /// @param segment The segment id.
    /// @param allowed True to allow, false to disallow.
    function setSegment(uint256 modelId, uint32 segment, bool allowed) external {
        _ownedModel(modelId);
        _setSegment(modelId, segment, allowed);
    }

    // ----------------------------------------------------------------------------------------------------------------
    // Rounds
    // ----------------------------------------------------------------------------------------------------------------

    /// @notice Opens the next round, training from the model's current global model.
    /// @dev Requirements: caller owns or aggregates the model; the previous round, if any, is Finalized or Failed.
    /// Emits {RoundOpened}.
    /// @param modelId The model.
    /// @return round The new round's number, counted from 1.
    function openRound(uint256 modelId) external returns (uint64 round) {
        Model storage model = _existingModel(modelId);
        if (msg.sender != model.owner && !_aggregators[modelId][msg.sender]) {
            revert NotModelOperator(modelId, msg.sender);
        }
        uint64 previous = model.currentRound;
        if (previous != 0) {
            RoundState state = _rounds[modelId][previous].state;
            if (state != RoundState.Finalized && state != RoundState.Failed) {
                revert RoundStateInvalid(modelId, previous, state);
            }
        }
        round = previous + 1;
        model.currentRound = round;
        uint64 deadline = uint64(block.timestamp) + model.roundDuration;
        Round storage stored = _rounds[modelId][round];
        stored.openedAt = uint64(block.timestamp);
        stored.deadline = deadline;
        stored.state = RoundState.Open;
        stored.baseModelHash = model.globalModelHash;
        emit RoundOpened(modelId, round, model.globalModelHash, deadline);
    }

    /// @notice Stops a round from taking commitments before its deadline.
    /// @dev Requirements: caller aggregates the model; the round is current and Open. Emits {RoundClosed}.
    /// @param modelId The model.
    /// @param round The round.
    function closeRound(uint256 modelId, uint64 round) external {
        _onlyAggregator(modelId);
        Round storage stored = _currentRound(modelId, round);
        if (stored.state != RoundState.Open) revert RoundStateInvalid(modelId, round, stored.state);
        stored.state = RoundState.Closed;
        emit RoundClosed(modelId, round, msg.sender);
    }

    /// @notice Commits the caller's update; the caller must be the device's current key.
    /// @dev Checks, in order: model and round, caller, device status, credential, role, segment, trust, duplicate.
    /// Emits {UpdateCommitted}.
    /// @param commitment The update commitment.
    function commitUpdate(Commitment calldata commitment) external {
        _commit(commitment, msg.data[0:0]);
    }

    /// @notice Commits a device's update on its behalf, with the device's EIP-712 signature; the relayer pays gas.
    /// @dev The signature covers chain id and this contract (domain), model, round, device, content hash, CID,
    /// sample count, base model hash and the device's current nonce. Emits {UpdateCommitted}.
    /// @param commitment The update commitment.
    /// @param signature The device's 65-byte signature, `v` as 0/1 or 27/28, low `s` only.
    function commitUpdateFor(Commitment calldata commitment, bytes calldata signature) external {
        _commit(commitment, signature);
    }

    /// @notice Ends a round: with a new global model when at least `quorum` updates were accepted, else as failed.
    /// @dev Requirements: caller aggregates the model; the round is current and either Closed, or Open with its
    /// deadline passed. Emits {RoundFinalized} or {RoundFailed}.
    /// @param modelId The model.
    /// @param round The round.
    /// @param newModelHash SHA-256 of the new global model's bytes (ignored for a failed round).
    /// @param newModelCid CID of the new global model (ignored for a failed round).
    /// @param acceptedDigest Digest of the accepted set of commitments, as documented for auditors.
    /// @param acceptedCount How many updates were accepted.
    /// @param reportHash SHA-256 of the verification report's bytes.
    /// @param reportCid CID of the verification report.
    function finalizeRound(
        uint256 modelId,
        uint64 round,
        bytes32 newModelHash,
        string calldata newModelCid,
        bytes32 acceptedDigest,
        uint32 acceptedCount,
        bytes32 reportHash,
        string calldata reportCid
    ) external {
        _onlyAggregator(modelId);
        Round storage stored = _currentRound(modelId, round);
        if (stored.state == RoundState.Open) {
            if (block.timestamp <= stored.deadline) {
                revert RoundStillOpen(modelId, round, stored.deadline, block.timestamp);
            }
        } else if (stored.state != RoundState.Closed) {
            revert RoundStateInvalid(modelId, round, stored.state);
        }
        stored.acceptedCount = acceptedCount;
        stored.acceptedDigest = acceptedDigest;
        stored.reportHash = reportHash;
        Model storage model = _models[modelId];
        if (acceptedCount < model.quorum) {
            stored.state = RoundState.Failed;
            emit RoundFailed(modelId, round, acceptedCount, model.quorum, reportHash, reportCid, msg.sender);
            return;
        }
        stored.state = RoundState.Finalized;
        stored.newModelHash = newModelHash;
        model.globalModelHash = newModelHash;
        model.globalModelCid = newModelCid;
        emit RoundFinalized(
            modelId,
            round,
            newModelHash,
            newModelCid,
            acceptedDigest,
            acceptedCount,
            reportHash,
            reportCid,
            msg.sender
        );
    }

    // ----------------------------------------------------------------------------------------------------------------
    // Views
    // ----------------------------------------------------------------------------------------------------------------

    /// @notice Returns how many models exist; ids run from 1 to this number.
    /// @return The model count.
    function modelCount() external view returns (uint256) {
        return _modelCount;
    }

    /// @notice Returns a model's full record.
    /// @param modelId The model.
    /// @return The model record.
    function modelOf(uint256 modelId) external view returns (Model memory) {
        return _existingModel(modelId);
    }

    /// @notice Returns a round's record (all zero for a round never opened).
    /// @param modelId The model.
    /// @param round The round.
    /// @return The round record.
    function roundOf(uint256 modelId, uint64 round) external view returns (Round memory) {
        return _rounds[modelId][round];
    }

    /// @notice Returns the hash a device's commitment stored, zero when it did not commit.
    /// @dev The hash is keccak256(abi.encode(contentHash, keccak256(cid), sampleCount, baseModelHash, nonce)).
    /// @param modelId The model.
    /// @param round The round.
    /// @param device The device's DID address.
    /// @return The stored commitment hash.
    function commitmentOf(uint256 modelId, uint64 round, address device) external view returns (bytes32) {
        return _commitments[_commitmentKey(modelId, round, device)];
    }

    /// @notice Tells whether `account` aggregates model `modelId`.
    /// @param modelId The model.
    /// @param account The account.
    /// @return True for an aggregator of the model.
    function isAggregator(uint256 modelId, address account) external view returns (bool) {
        return _aggregators[modelId][account];
    }

    /// @notice Tells whether a segment's devices may train model `modelId`.
    /// @param modelId The model.
    /// @param segment The segment id.
    /// @return True when allowed.
    function isSegmentAllowed(uint256 modelId, uint32 segment) external view returns (bool) {
        return _segments[modelId][segment];
    }

    /// @notice Tells whether `device` is enrolled in a segment that takes part in model `modelId`.
    /// @param modelId The model.
    /// @param device The device's DID address.
    /// @return True for a participant.
    function isParticipant(uint256 modelId, address device) external view returns (bool) {
        DeviceRegistry.Device memory record = devices.deviceOf(device);
        return record.status != DeviceRegistry.Status.None && _segments[modelId][record.segment];
    }

    /// @notice Returns the EIP-712 digest a device signs for `commitment` with `nonce`.
    /// @param commitment The update commitment.
    /// @param nonce The device's current signature nonce.
    /// @return The digest.
    function commitmentDigest(Commitment calldata commitment, uint64 nonce) external view returns (bytes32) {
        return _commitmentDigest(commitment, nonce);
    }

    // ----------------------------------------------------------------------------------------------------------------
    // Internal
    // ----------------------------------------------------------------------------------------------------------------

    function _commit(Commitment calldata commitment, bytes calldata signature) private {
        uint256 modelId = commitment.modelId;
        Model storage model = _existingModel(modelId);
        uint64 round = commitment.round;
        Round storage stored = _currentRound(modelId, round);
        if (stored.state != RoundState.Open) revert RoundStateInvalid(modelId, round, stored.state);
        if (block.timestamp > stored.deadline) {
            revert RoundDeadlinePassed(modelId, round, stored.deadline, block.timestamp);
        }

        address device = commitment.device;
        (DeviceRegistry.Device memory record, address key) = devices.deviceWithKey(device);
        address signer;
        if (signature.length == 0) {
            if (msg.sender != key) revert CallerNotDeviceKey(device, key, msg.sender);
            signer = msg.sender;
        } else {
            signer = Signatures.recover(_commitmentDigest(commitment, record.nonce), signature);
            if (signer != key) revert SignerMismatch(key, signer);
        }
        _checkDevice(modelId, model, device, record);

        bytes32 commitmentKey = _commitmentKey(modelId, round, device);
        if (_commitments[commitmentKey] != bytes32(0)) revert AlreadyCommitted(modelId, round, device);
        _commitments[commitmentKey] = keccak256(
            abi.encode(
                commitment.contentHash,
                keccak256(bytes(commitment.cid)),
                commitment.sampleCount,
                commitment.baseModelHash,
                record.nonce
            )
        );
        _emitCommitted(commitment, record.nonce, signer, signature);
    }

    function _emitCommitted(
        Commitment calldata commitment,
        uint64 nonce,
        address signer,
        bytes calldata signature
    ) private {
        emit UpdateCommitted(
            commitment.modelId,
            commitment.round,
            commitment.device,
            commitment.contentHash,
            commitment.cid,
            commitment.sampleCount,
            commitment.baseModelHash,
            nonce,
            signer,
            signature
        );
    }

    function _checkDevice(
        uint256 modelId,
        Model storage model,
        address device,
        DeviceRegistry.Device memory record
    ) private view {
        if (record.status != DeviceRegistry.Status.Active) revert DeviceNotActive(device, record.status);
        if (record.credentialExpiresAt <= block.timestamp) {
            revert CredentialExpired(device, record.credentialExpiresAt, block.timestamp);
        }
        uint16 required = model.requiredRoles;
        if (record.roles & required != required) revert DeviceRoleMissing(device, record.roles, required);
        if (!_segments[modelId][record.segment]) revert SegmentNotAllowed(modelId, device, record.segment);
        uint16 minTrust = model.minTrust;
        if (minTrust != 0) {
            uint16 score = trust.scoreOf(device);
            if (score < minTrust) revert TrustTooLow(device, score, minTrust);
        }
    }

    function _commitmentDigest(Commitment calldata commitment, uint64 nonce) private view returns (bytes32) {
        return
            _hashTypedDataV4(
                keccak256(
                    abi.encode(
                        _COMMITMENT_TYPEHASH,
                        commitment.modelId,
                        commitment.round,
                        commitment.device,
                        commitment.contentHash,
                        keccak256(bytes(commitment.cid)),
                        commitment.sampleCount,
                        commitment.baseModelHash,
                        nonce
                    )
                )
            );
    }

    function _commitmentKey(uint256 modelId, uint64 round, address device) private pure returns (bytes32) {
        return keccak256(abi.encode(modelId, round, device));
    }

    function _existingModel(uint256 modelId) private view returns (Model storage model) {
        model = _models[modelId];
        if (model.owner == address(0)) revert ModelNotFound(modelId);
    }

    function _ownedModel(uint256 modelId) private view returns (Model storage model) {
        model = _existingModel(modelId);
        if (model.owner != msg.sender) revert NotModelOwner(modelId, msg.sender);
    }

    function _onlyAggregator(uint256 modelId) private view {
        _existingModel(modelId);
        if (!_aggregators[modelId][msg.sender]) revert NotModelAggregator(modelId, msg.sender);
    }

    function _currentRound(uint256 modelId, uint64 round) private view returns (Round storage) {
        uint64 current = _models[modelId].currentRound;
        if (round != current || round == 0) revert RoundNotCurrent(modelId, round, current);
        return _rounds[modelId][round];
    }

    function _setAggregator(uint256 modelId, address account, bool enabled) private {
        if (account == address(0)) revert ZeroAddress();
        if (enabled && !hasRole(AGGREGATOR_ROLE, account)) revert AccountNotAggregator(account);
        if (_aggregators[modelId][account] == enabled) return;
        _aggregators[modelId][account] = enabled;
        emit ModelAggregatorChanged(modelId, account, enabled);
    }

    function _setSegment(uint256 modelId, uint32 segment, bool allowed) private {
        if (_segments[modelId][segment] == allowed) return;
        _segments[modelId][segment] = allowed;
        emit ModelSegmentChanged(modelId, segment, allowed);
    }

    function _checkParams(ModelParams calldata params) private pure {
        if (params.minTrust > 10_000) revert ModelParamInvalid("minTrust", params.minTrust);
        if (params.quorum == 0) revert ModelParamInvalid("quorum", params.quorum);
        if (params.roundDuration == 0) revert ModelParamInvalid("roundDuration", params.roundDuration);
        if (params.maxUpdateBytes == 0) revert ModelParamInvalid("maxUpdateBytes", params.maxUpdateBytes);
        if (params.maxSampleCount == 0) revert ModelParamInvalid("maxSampleCount", params.maxSampleCount);
    }

    function _storeParams(Model storage model, ModelParams calldata params) private {
        model.minTrust = params.minTrust;
        model.requiredRoles = params.requiredRoles;
        model.quorum = params.quorum;
        model.roundDuration = params.roundDuration;
        model.maxUpdateBytes = params.maxUpdateBytes;
        model.maxSampleCount = params.maxSampleCount;
        model.aggregationRule = params.aggregationRule;
    }
}
