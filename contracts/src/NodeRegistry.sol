// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Address} from "@openzeppelin/contracts/utils/Address.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

/// @title NodeRegistry: node stakes, unbonding, and slashing on signed-receipt evidence.
/// @notice Also the EIP-712 verifying contract of receipts: domain ("TensorGrid", "1",
/// chainId, address(this)). Receipts are signed off-chain by nodes (tensorgrid.crypto);
/// a receipt whose output hash differs from the correct one is on-chain evidence of a
/// wrong result, and the coordinator can slash its signer with it, once per task attempt.
contract NodeRegistry is AccessControl, ReentrancyGuardTransient, EIP712 {
    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");
    /// @dev Must equal RECEIPT_TYPE in tensorgrid/crypto/receipts.py byte for byte.
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(bytes32 jobId,bytes32 taskId,uint32 attempt,bytes32 inputHash,bytes32 outputHash,bytes32 commitment)"
    );

    struct Receipt {
        bytes32 jobId;
        bytes32 taskId;
        uint32 attempt;
        bytes32 inputHash;
        bytes32 outputHash;
        bytes32 commitment;
    }

    /// @dev One slot: stake and unbonding are wei (uint128 holds far more than all ether).
    struct Node {
        uint128 stake;
        uint128 unbonding;
        uint64 unbondAt;
        bool registered;
    }

    uint256 public immutable minStake;
    uint64 public immutable unbondingDelay;
    /// @dev Sum of every node's stake + unbonding: what this contract owes (== its balance).
    uint256 public totalStaked;

    mapping(address node => Node) private _nodes;
    /// @notice keccak256(abi.encode(taskId, attempt)) => already used as slashing evidence.
    mapping(bytes32 evidence => bool) public slashedEvidence;

    event Registered(address indexed node, uint256 stake);
    event StakeAdded(address indexed node, uint256 amount, uint256 stake);
    event UnbondRequested(address indexed node, uint256 amount, uint256 unbonding, uint64 unbondAt);
    event Withdrawn(address indexed node, uint256 amount);
    event Slashed(
        address indexed node, bytes32 indexed taskId, uint32 attempt, uint256 amount, address beneficiary
    );

    error ZeroAddress();
    error ZeroAmount();
    error AlreadyRegistered(address node);
    error NotRegistered(address node);
    error StakeTooLow(uint256 sent, uint256 minimum);
    error InsufficientStake(uint256 requested, uint256 available);
    error NothingToWithdraw();
    error StillUnbonding(uint64 availableAt);
    error OutputMatches();
    error EvidenceAlreadyUsed(bytes32 taskId, uint32 attempt);
    error NotANode(address signer);
    error NothingToSlash(address node);

    constructor(address admin, address coordinator, uint256 minStake_, uint64 unbondingDelay_)
        EIP712("TensorGrid", "1")
    {
        if (admin == address(0) || coordinator == address(0)) revert ZeroAddress();
        if (minStake_ == 0) revert ZeroAmount();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(COORDINATOR_ROLE, coordinator);
        minStake = minStake_;
        unbondingDelay = unbondingDelay_;
    }

    /// @notice Join as a node, staking msg.value (at least minStake).
    function register() external payable {
        Node storage n = _nodes[msg.sender];
        if (n.registered) revert AlreadyRegistered(msg.sender);
        if (msg.value < minStake) revert StakeTooLow(msg.value, minStake);
        n.registered = true;
        n.stake = SafeCast.toUint128(msg.value);
        totalStaked += msg.value;
        emit Registered(msg.sender, msg.value);
    }

    /// @notice Add msg.value to the caller's bonded stake.
    function addStake() external payable {
        Node storage n = _nodes[msg.sender];
        if (!n.registered) revert NotRegistered(msg.sender);
        if (msg.value == 0) revert ZeroAmount();
        n.stake += SafeCast.toUint128(msg.value);
        totalStaked += msg.value;
        emit StakeAdded(msg.sender, msg.value, n.stake);
    }

    /// @notice Move `amount` of bonded stake to unbonding; it stays slashable until withdrawn.
    /// Each request restarts the delay for everything unbonding.
    function requestUnbond(uint256 amount) external {
        Node storage n = _nodes[msg.sender];
        if (!n.registered) revert NotRegistered(msg.sender);
        if (amount == 0) revert ZeroAmount();
        if (amount > n.stake) revert InsufficientStake(amount, n.stake);
        uint128 value = uint128(amount); // amount <= stake, a uint128
        n.stake -= value;
        n.unbonding += value;
        n.unbondAt = SafeCast.toUint64(block.timestamp + unbondingDelay);
        emit UnbondRequested(msg.sender, amount, n.unbonding, n.unbondAt);
    }

    /// @notice Pay out everything unbonding once the delay has passed.
    function withdraw() external nonReentrant {
        Node storage n = _nodes[msg.sender];
        uint256 amount = n.unbonding;
        if (amount == 0) revert NothingToWithdraw();
        if (block.timestamp < n.unbondAt) revert StillUnbonding(n.unbondAt);
        n.unbonding = 0;
        totalStaked -= amount;
        emit Withdrawn(msg.sender, amount);
        Address.sendValue(payable(msg.sender), amount);
    }

    /// @notice Slash the signer of `r` by up to `amount` (capped at its stake incl. unbonding),
    /// paid to `beneficiary`. Requires r.outputHash != correctOutputHash, a signer that is a
    /// registered node, and evidence (taskId, attempt) not used before.
    function slash(
        Receipt calldata r,
        bytes calldata signature,
        uint256 amount,
        bytes32 correctOutputHash,
        address beneficiary
    ) external onlyRole(COORDINATOR_ROLE) nonReentrant returns (address node, uint256 taken) {
        if (beneficiary == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        if (r.outputHash == correctOutputHash) revert OutputMatches();
        bytes32 key = keccak256(abi.encode(r.taskId, r.attempt));
        if (slashedEvidence[key]) revert EvidenceAlreadyUsed(r.taskId, r.attempt);
        node = ECDSA.recoverCalldata(receiptDigest(r), signature);
        Node storage n = _nodes[node];
        if (!n.registered) revert NotANode(node);
        uint256 available = uint256(n.stake) + n.unbonding;
        taken = amount < available ? amount : available;
        if (taken == 0) revert NothingToSlash(node);

        slashedEvidence[key] = true;
        uint128 fromStake = taken < n.stake ? uint128(taken) : n.stake;
        n.stake -= fromStake;
        n.unbonding -= uint128(taken - fromStake);
        totalStaked -= taken;
        emit Slashed(node, r.taskId, r.attempt, taken, beneficiary);
        Address.sendValue(payable(beneficiary), taken);
    }

    /// @notice The EIP-712 digest a node signs for `r` under this contract's domain.
    function receiptDigest(Receipt calldata r) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    RECEIPT_TYPEHASH, r.jobId, r.taskId, r.attempt, r.inputHash, r.outputHash, r.commitment
                )
            )
        );
    }

    /// @notice The EIP-712 domain separator receipts are signed under.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice Bonded stake of `node` (excluding what is unbonding).
    function stakeOf(address node) external view returns (uint256) {
        return _nodes[node].stake;
    }

    /// @notice Full record of `node`.
    function nodeInfo(address node)
        external
        view
        returns (uint256 stake, uint256 unbonding, uint64 unbondAt, bool registered)
    {
        Node storage n = _nodes[node];
        return (n.stake, n.unbonding, n.unbondAt, n.registered);
    }

    /// @notice A registered node whose bonded stake is at least minStake: eligible for work.
    function isActive(address node) external view returns (bool) {
        Node storage n = _nodes[node];
        return n.registered && n.stake >= minStake;
    }
}
