// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Address} from "@openzeppelin/contracts/utils/Address.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {JobEscrow} from "./JobEscrow.sol";

/// @title Settlement: job escrow plus epoch Merkle roots of cumulative node earnings.
/// @notice Each epoch the coordinator posts one root over leaves
/// keccak256(bytes.concat(keccak256(abi.encode(node, cumulativeWei)))) (OpenZeppelin's
/// double-hashed standard leaf; pairs hashed sorted, as MerkleProof expects) and, in the same
/// call, charges the job escrows that paid for the new earnings into the claim pool: per job a
/// number of accepted tasks, each at the job's own price (so no job pays more than its accepted
/// tasks × its reward, nor for more tasks than it funded). The guardian set at deploy, a key
/// separate from the coordinator's, can revoke a root during its challenge window.
/// A root becomes claimable once its challenge window has passed without a revocation;
/// a node claims cumulative - alreadyClaimed against the newest such root.
///
/// Solvency: address(this).balance == escrowed + totalCharged - totalClaimed at all times,
/// and a claim can never take the pool below zero (totalClaimed <= totalCharged).
contract Settlement is JobEscrow {
    bytes32 public constant GUARDIAN_ROLE = keccak256("GUARDIAN_ROLE");

    struct Root {
        bytes32 root;
        uint64 postedAt;
        bool revoked;
    }

    uint64 public immutable challengeWindow;
    uint64 public lastEpoch;
    /// @notice Everything ever charged from escrows into the claim pool.
    uint256 public totalCharged;
    /// @notice Everything ever paid out to claimants.
    uint256 public totalClaimed;

    mapping(uint64 epoch => Root) private _roots;
    mapping(address node => uint256) public claimed;

    event RootPosted(uint64 indexed epoch, bytes32 root, uint256 charged, uint64 claimableAt);
    event RootRevoked(uint64 indexed epoch, address by);
    event Claimed(address indexed node, uint64 indexed epoch, uint256 amount, uint256 cumulative);

    error ZeroAddress();
    error WrongEpoch(uint64 epoch, uint64 expected);
    error EmptyRoot();
    error LengthMismatch(uint256 jobIds, uint256 taskCounts);
    error GuardianIsCoordinator(address guardian);
    error UnknownEpoch(uint64 epoch);
    error AlreadyRevoked(uint64 epoch);
    error ChallengeWindowOver(uint64 epoch);
    error NoClaimableRoot();
    error InvalidProof();
    error NothingToClaim(uint256 cumulative, uint256 alreadyClaimed);
    error PoolInsufficient(uint256 amount, uint256 available);

    constructor(address admin, address coordinator, address guardian, uint64 challengeWindow_) {
        if (admin == address(0) || coordinator == address(0) || guardian == address(0)) revert ZeroAddress();
        if (guardian == coordinator) revert GuardianIsCoordinator(guardian);
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(COORDINATOR_ROLE, coordinator);
        _grantRole(GUARDIAN_ROLE, guardian);
        challengeWindow = challengeWindow_;
    }

    /// @notice Post the root of `epoch` (exactly lastEpoch + 1) and charge taskCounts[i] tasks of
    /// jobIds[i], at that job's reward per task, from its escrow into the claim pool. Each count
    /// is bounded by the tasks its job has left to pay for; the whole call reverts if any is not.
    function postRoot(uint64 epoch, bytes32 root, bytes32[] calldata jobIds, uint256[] calldata taskCounts)
        external
        onlyRole(COORDINATOR_ROLE)
    {
        uint64 expected = lastEpoch + 1;
        if (epoch != expected) revert WrongEpoch(epoch, expected);
        if (root == bytes32(0)) revert EmptyRoot();
        if (jobIds.length != taskCounts.length) revert LengthMismatch(jobIds.length, taskCounts.length);
        uint256 total;
        for (uint256 i = 0; i < jobIds.length; ++i) {
            total += _charge(jobIds[i], taskCounts[i]);
        }
        escrowed -= total;
        totalCharged += total;
        lastEpoch = epoch;
        _roots[epoch] = Root({root: root, postedAt: uint64(block.timestamp), revoked: false});
        emit RootPosted(epoch, root, total, uint64(block.timestamp) + challengeWindow);
    }

    /// @notice Revoke a root still inside its challenge window (coordinator or guardian).
    /// Its charges stay in the pool; the next root should carry the corrected earnings.
    function revokeRoot(uint64 epoch) external {
        if (!hasRole(COORDINATOR_ROLE, msg.sender) && !hasRole(GUARDIAN_ROLE, msg.sender)) {
            revert AccessControlUnauthorizedAccount(msg.sender, GUARDIAN_ROLE);
        }
        Root storage r = _roots[epoch];
        if (r.root == bytes32(0)) revert UnknownEpoch(epoch);
        if (r.revoked) revert AlreadyRevoked(epoch);
        if (block.timestamp >= uint256(r.postedAt) + challengeWindow) revert ChallengeWindowOver(epoch);
        r.revoked = true;
        emit RootRevoked(epoch, msg.sender);
    }

    /// @notice Pay the caller cumulative - claimed[caller], proven against the newest root past
    /// its challenge window. Reverts if there is nothing more to pay.
    function claim(uint256 cumulative, bytes32[] calldata proof) external nonReentrant returns (uint256 amount) {
        (uint64 epoch, bytes32 root) = claimableRoot();
        if (epoch == 0) revert NoClaimableRoot();
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(msg.sender, cumulative))));
        if (!MerkleProof.verifyCalldata(proof, root, leaf)) revert InvalidProof();
        uint256 already = claimed[msg.sender];
        if (cumulative <= already) revert NothingToClaim(cumulative, already);
        amount = cumulative - already;
        uint256 available = totalCharged - totalClaimed;
        if (amount > available) revert PoolInsufficient(amount, available);
        claimed[msg.sender] = cumulative;
        totalClaimed += amount;
        emit Claimed(msg.sender, epoch, amount, cumulative);
        Address.sendValue(payable(msg.sender), amount);
    }

    /// @notice The newest epoch (and its root) that is not revoked and past its challenge window;
    /// (0, 0) if none. Walks back only over roots still in their window or revoked.
    function claimableRoot() public view returns (uint64 epoch, bytes32 root) {
        for (uint64 e = lastEpoch; e > 0; --e) {
            Root storage r = _roots[e];
            if (!r.revoked && block.timestamp >= uint256(r.postedAt) + challengeWindow) {
                return (e, r.root);
            }
        }
        return (0, bytes32(0));
    }

    /// @notice The root posted for `epoch`, when, and whether it was revoked.
    function rootOf(uint64 epoch) external view returns (bytes32 root, uint64 postedAt, bool revoked) {
        Root storage r = _roots[epoch];
        return (r.root, r.postedAt, r.revoked);
    }

    /// @notice What this contract owes: open escrows plus unclaimed pool. Equals its balance.
    function owed() external view returns (uint256) {
        return escrowed + totalCharged - totalClaimed;
    }
}
