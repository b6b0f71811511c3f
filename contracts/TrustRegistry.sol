// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @notice The part of the ModelRegistry that the TrustRegistry asks who may write scores.
interface IModelMembership {
    /// @notice Tells whether `account` aggregates model `modelId`.
    function isAggregator(uint256 modelId, address account) external view returns (bool);

    /// @notice Tells whether `device` takes part in model `modelId`, by its segment.
    function isParticipant(uint256 modelId, address device) external view returns (bool);
}

/// @title Per-device trust scores in basis points, written in batches by model aggregators
/// @notice A device that was never scored has `initialScore`. Only an aggregator of a model the device takes part
/// in can change its score, and every change carries a reason code.
contract TrustRegistry is AccessControl {
    /// @notice The largest score: 10,000 basis points.
    uint16 public constant MAX_SCORE = 10_000;

    /// @notice The score of a device that no aggregator has scored yet.
    uint16 public immutable initialScore;

    struct Score {
        uint16 value;
        bool written;
        uint64 updatedAt;
        uint32 updates;
    }

    IModelMembership private _models;
    mapping(address device => Score) private _scores;

    /// @notice The score is above MAX_SCORE.
    error ScoreOutOfRange(address device, uint16 score);
    /// @notice The batch arrays differ in length.
    error BatchLengthMismatch(uint256 devices, uint256 scores, uint256 reasons);
    /// @notice The caller does not aggregate the model.
    error NotModelAggregator(uint256 modelId, address account);
    /// @notice The device does not take part in the model.
    error DeviceNotInModel(uint256 modelId, address device);
    /// @notice The ModelRegistry is not bound yet, or was already bound.
    error ModelRegistryBinding(address current);
    /// @notice A zero address was given where an account or contract is required.
    error ZeroAddress();

    /// @notice Emitted for every changed score.
    event TrustScoreChanged(
        address indexed device,
        uint256 indexed modelId,
        uint16 oldScore,
        uint16 newScore,
        uint8 reason,
        address indexed aggregator
    );
    /// @notice Emitted once, when the admin binds the ModelRegistry that names the aggregators.
    event ModelRegistryBound(address modelRegistry);

    /// @param admin The account that holds DEFAULT_ADMIN_ROLE.
    /// @param initialScore_ The score of a device that was never scored, at most MAX_SCORE.
    constructor(address admin, uint16 initialScore_) {
        if (admin == address(0)) revert ZeroAddress();
        if (initialScore_ > MAX_SCORE) revert ScoreOutOfRange(address(0), initialScore_);
        initialScore = initialScore_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Binds the ModelRegistry whose aggregator sets decide who may write scores. Callable once.
    /// @dev Requirements: caller has DEFAULT_ADMIN_ROLE; no registry is bound yet. Emits {ModelRegistryBound}.
    /// @param models The deployed ModelRegistry.
    function bindModelRegistry(IModelMembership models) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (address(models) == address(0)) revert ZeroAddress();
        if (address(_models) != address(0)) revert ModelRegistryBinding(address(_models));
        _models = models;
        emit ModelRegistryBound(address(models));
    }

    /// @notice Writes new scores for many devices of one model, each with a reason code.
    /// @dev Requirements: the ModelRegistry is bound; caller aggregates `modelId`; every device takes part in it;
    /// every score is at most MAX_SCORE; the three arrays have one length.
    /// Emits {TrustScoreChanged} for each score that differs from the current one.
    /// @param modelId The model whose aggregator writes.
    /// @param devices The devices' DID addresses.
    /// @param scores The new scores in basis points.
    /// @param reasons One reason code per device (see the project's documented list).
    function setScores(
        uint256 modelId,
        address[] calldata devices,
        uint16[] calldata scores,
        uint8[] calldata reasons
    ) external {
        IModelMembership models = _models;
        if (address(models) == address(0)) revert ModelRegistryBinding(address(0));
        if (devices.length != scores.length || devices.length != reasons.length) {
            revert BatchLengthMismatch(devices.length, scores.length, reasons.length);
        }
        if (!models.isAggregator(modelId, msg.sender)) revert NotModelAggregator(modelId, msg.sender);
        for (uint256 i = 0; i < devices.length; ++i) {
            address device = devices[i];
            uint16 score = scores[i];
            if (score > MAX_SCORE) revert ScoreOutOfRange(device, score);
            if (!models.isParticipant(modelId, device)) revert DeviceNotInModel(modelId, device);
            Score storage stored = _scores[device];
            uint16 old = stored.written ? stored.value : initialScore;
            if (stored.written && old == score) continue;
            stored.value = score;
            stored.written = true;
            stored.updatedAt = uint64(block.timestamp);
            unchecked {
                stored.updates += 1;
            }
            emit TrustScoreChanged(device, modelId, old, score, reasons[i], msg.sender);
        }
    }

    /// @notice Returns the current score of `device` in basis points.
    /// @param device The device's DID address.
    /// @return The score, `initialScore` when never written.
    function scoreOf(address device) external view returns (uint16) {
        Score storage stored = _scores[device];
        return stored.written ? stored.value : initialScore;
    }

    /// @notice Returns the scores of many devices in one call.
    /// @param devices The devices' DID addresses.
    /// @return scores One score per device, in the same order.
    function scoresOf(address[] calldata devices) external view returns (uint16[] memory scores) {
        scores = new uint16[](devices.length);
        for (uint256 i = 0; i < devices.length; ++i) {
            Score storage stored = _scores[devices[i]];
            scores[i] = stored.written ? stored.value : initialScore;
        }
    }

    /// @notice Returns the full score record of `device`.
    /// @param device The device's DID address.
    /// @return value The score (`initialScore` when never written).
    /// @return updatedAt The timestamp of the last change, zero when never written.
    /// @return updates How many times the score changed.
    function scoreRecordOf(address device) external view returns (uint16 value, uint64 updatedAt, uint32 updates) {
        Score storage stored = _scores[device];
        return (stored.written ? stored.value : initialScore, stored.updatedAt, stored.updates);
    }

    /// @notice Returns the bound ModelRegistry (zero before binding).
    /// @return The ModelRegistry address.
    function modelRegistry() external view returns (address) {
        return address(_models);
    }
}
