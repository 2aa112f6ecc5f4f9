// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Address} from "@openzeppelin/contracts/utils/Address.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IJobBook} from "./IJobBook.sol";

/// @title NodeRegistry: node stakes, unbonding, and slashing on signed-receipt evidence.
/// @notice Also the EIP-712 verifying contract of receipts: domain ("TensorGrid", "1",
/// chainId, address(this)). Receipts are signed off-chain by nodes (tensorgrid.crypto);
/// a receipt whose output hash differs from the correct one is evidence of a wrong result.
///
/// Slashing has checks and balances. The coordinator only *proposes*: the proposal names the
/// job the receipt was signed for (which must be open in the job book, so no slash for a job
/// long settled), takes at most maxSlashBps of the node's stake, and is paid to that job's
/// submitter as recorded at createJob (never a beneficiary of the coordinator's choosing).
/// The amount leaves the node's stake at once (it cannot be withdrawn meanwhile) and waits
/// slashDelay seconds, during which the guardian, a key set at deploy and distinct from the
/// coordinator, can veto it and give the stake back. After the delay anyone can execute it;
/// the proceeds are then owed to the beneficiary, who withdraws them (pull): a beneficiary
/// that rejects ether blocks nothing. Each (taskId, attempt) serves as evidence once.
///
/// Solvency: address(this).balance == totalStaked + pendingSlashes + unpaidProceeds.
contract NodeRegistry is AccessControl, ReentrancyGuardTransient, EIP712 {
    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");
    bytes32 public constant GUARDIAN_ROLE = keccak256("GUARDIAN_ROLE");
    uint16 public constant BPS = 10_000;
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

    enum SlashState {
        None,
        Pending,
        Vetoed,
        Executed
    }

    /// @dev id = keccak256(abi.encode(taskId, attempt)), the evidence key.
    struct SlashProposal {
        address node;
        uint64 executableAt;
        SlashState state;
        address beneficiary;
        uint128 amount;
        bytes32 jobId;
        bytes32 taskId;
        uint32 attempt;
    }

    uint256 public immutable minStake;
    uint64 public immutable unbondingDelay;
    /// @notice Seconds between a slash proposal and the earliest time it can be executed.
    uint64 public immutable slashDelay;
    /// @notice Most a single proposal can take, in basis points of the node's stake + unbonding.
    uint16 public immutable maxSlashBps;
    /// @notice The job book (Settlement) whose jobs and submitters slashes are for.
    IJobBook public immutable jobBook;
    /// @dev Sum of every node's stake + unbonding.
    uint256 public totalStaked;
    /// @notice Stake taken by proposals not yet executed or vetoed.
    uint256 public pendingSlashes;
    /// @notice Executed slashes not yet withdrawn by their beneficiaries.
    uint256 public unpaidProceeds;

    mapping(address node => Node) private _nodes;
    /// @notice keccak256(abi.encode(taskId, attempt)) => already used as slashing evidence.
    mapping(bytes32 evidence => bool) public slashedEvidence;
    mapping(bytes32 id => SlashProposal) private _proposals;
    /// @notice Slash proceeds each beneficiary can withdraw.
    mapping(address beneficiary => uint256) public proceeds;

    event Registered(address indexed node, uint256 stake);
    event StakeAdded(address indexed node, uint256 amount, uint256 stake);
    event UnbondRequested(address indexed node, uint256 amount, uint256 unbonding, uint64 unbondAt);
    event Withdrawn(address indexed node, uint256 amount);
    event SlashProposed(
        bytes32 indexed id,
        address indexed node,
        bytes32 indexed jobId,
        bytes32 taskId,
        uint32 attempt,
        uint256 amount,
        address beneficiary,
        uint64 executableAt
    );
    event SlashVetoed(bytes32 indexed id, address indexed node, uint256 amount, address by);
    /// @dev Indexed like SlashProposed (id, node, jobId): a job's slashes are one topic filter away.
    event Slashed(
        bytes32 indexed id,
        address indexed node,
        bytes32 indexed jobId,
        bytes32 taskId,
        uint32 attempt,
        uint256 amount,
        address beneficiary
    );
    event ProceedsWithdrawn(address indexed beneficiary, address to, uint256 amount);

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
    error UnknownJob(bytes32 jobId);
    error JobClosed(bytes32 jobId);
    error NotPending(bytes32 id, SlashState state);
    error DelayOver(bytes32 id, uint64 executableAt);
    error DelayNotOver(bytes32 id, uint64 executableAt);
    error GuardianIsCoordinator(address guardian);
    error BadSlashCap(uint16 maxSlashBps);

    constructor(
        address admin,
        address coordinator,
        address guardian,
        IJobBook jobBook_,
        uint256 minStake_,
        uint64 unbondingDelay_,
        uint64 slashDelay_,
        uint16 maxSlashBps_
    ) EIP712("TensorGrid", "1") {
        if (admin == address(0) || coordinator == address(0) || guardian == address(0)) revert ZeroAddress();
        if (address(jobBook_) == address(0)) revert ZeroAddress();
        if (guardian == coordinator) revert GuardianIsCoordinator(guardian);
        if (minStake_ == 0) revert ZeroAmount();
        if (maxSlashBps_ == 0 || maxSlashBps_ > BPS) revert BadSlashCap(maxSlashBps_);
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(COORDINATOR_ROLE, coordinator);
        _grantRole(GUARDIAN_ROLE, guardian);
        jobBook = jobBook_;
        minStake = minStake_;
        unbondingDelay = unbondingDelay_;
        slashDelay = slashDelay_;
        maxSlashBps = maxSlashBps_;
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

    /// @notice Propose to slash the signer of `r` by up to `amount`, capped at maxSlashBps of its
    /// stake + unbonding, for the job r.jobId, paid to that job's submitter after slashDelay
    /// unless the guardian vetoes it. Requires r.outputHash != correctOutputHash, an open job,
    /// a signer that is a registered node, and evidence (taskId, attempt) not used before.
    /// The amount leaves the node's stake now. Returns the proposal id and the amount taken.
    function proposeSlash(Receipt calldata r, bytes calldata signature, uint256 amount, bytes32 correctOutputHash)
        external
        onlyRole(COORDINATOR_ROLE)
        returns (bytes32 id, uint256 taken)
    {
        if (amount == 0) revert ZeroAmount();
        if (r.outputHash == correctOutputHash) revert OutputMatches();
        id = evidenceKey(r.taskId, r.attempt);
        if (slashedEvidence[id]) revert EvidenceAlreadyUsed(r.taskId, r.attempt);
        (address beneficiary, bool open) = jobBook.jobParty(r.jobId);
        if (beneficiary == address(0)) revert UnknownJob(r.jobId);
        if (!open) revert JobClosed(r.jobId);
        address node = ECDSA.recoverCalldata(receiptDigest(r), signature);
        taken = _takeStake(node, amount);
        slashedEvidence[id] = true;
        _record(id, r, node, beneficiary, taken);
    }

    function _record(bytes32 id, Receipt calldata r, address node, address beneficiary, uint256 taken) private {
        uint64 executableAt = SafeCast.toUint64(block.timestamp + slashDelay);
        _proposals[id] = SlashProposal({
            node: node,
            executableAt: executableAt,
            state: SlashState.Pending,
            beneficiary: beneficiary,
            amount: uint128(taken),
            jobId: r.jobId,
            taskId: r.taskId,
            attempt: r.attempt
        });
        emit SlashProposed(id, node, r.jobId, r.taskId, r.attempt, taken, beneficiary, executableAt);
    }

    /// @dev Move min(amount, cap) of a registered node's stake (bonded first) into pendingSlashes.
    function _takeStake(address node, uint256 amount) private returns (uint256 taken) {
        Node storage n = _nodes[node];
        if (!n.registered) revert NotANode(node);
        uint256 cap = (uint256(n.stake) + n.unbonding) * maxSlashBps / BPS;
        taken = amount < cap ? amount : cap;
        if (taken == 0) revert NothingToSlash(node);
        uint128 fromStake = taken < n.stake ? uint128(taken) : n.stake;
        n.stake -= fromStake;
        n.unbonding -= uint128(taken - fromStake);
        totalStaked -= taken;
        pendingSlashes += taken;
    }

    /// @notice Guardian: cancel a pending proposal before its delay is over; the stake goes back
    /// to the node (bonded). Its evidence stays used.
    function vetoSlash(bytes32 id) external onlyRole(GUARDIAN_ROLE) {
        SlashProposal storage p = _proposals[id];
        if (p.state != SlashState.Pending) revert NotPending(id, p.state);
        if (block.timestamp >= p.executableAt) revert DelayOver(id, p.executableAt);
        p.state = SlashState.Vetoed;
        uint256 amount = p.amount;
        _nodes[p.node].stake += uint128(amount);
        pendingSlashes -= amount;
        totalStaked += amount;
        emit SlashVetoed(id, p.node, amount, msg.sender);
    }

    /// @notice Anyone, once the delay is over: the proposal's amount becomes its beneficiary's
    /// to withdraw. Nothing is sent here.
    function executeSlash(bytes32 id) external {
        SlashProposal storage p = _proposals[id];
        if (p.state != SlashState.Pending) revert NotPending(id, p.state);
        if (block.timestamp < p.executableAt) revert DelayNotOver(id, p.executableAt);
        p.state = SlashState.Executed;
        uint256 amount = p.amount;
        pendingSlashes -= amount;
        unpaidProceeds += amount;
        proceeds[p.beneficiary] += amount;
        emit Slashed(id, p.node, p.jobId, p.taskId, p.attempt, amount, p.beneficiary);
    }

    /// @notice Pay the caller's slash proceeds to `to` (a contract that cannot take ether names another address).
    function withdrawProceeds(address payable to) external nonReentrant returns (uint256 amount) {
        if (to == address(0)) revert ZeroAddress();
        amount = proceeds[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        proceeds[msg.sender] = 0;
        unpaidProceeds -= amount;
        emit ProceedsWithdrawn(msg.sender, to, amount);
        Address.sendValue(to, amount);
    }

    /// @notice A slash proposal (state None if there is no such id).
    function slashProposal(bytes32 id) external view returns (SlashProposal memory) {
        return _proposals[id];
    }

    /// @notice The evidence key, which is also the proposal id, of (taskId, attempt).
    function evidenceKey(bytes32 taskId, uint32 attempt) public pure returns (bytes32) {
        return keccak256(abi.encode(taskId, attempt));
    }

    /// @notice What this contract owes: stakes, pending slashes and unpaid proceeds. Equals its balance.
    function owed() external view returns (uint256) {
        return totalStaked + pendingSlashes + unpaidProceeds;
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
