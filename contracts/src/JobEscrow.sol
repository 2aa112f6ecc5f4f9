// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Address} from "@openzeppelin/contracts/utils/Address.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

/// @title JobEscrow: each job's budget in native ETH, from creation to result or refund.
/// @notice Abstract: deployed as part of Settlement, whose postRoot is the only code that can
/// charge a job (`_charge` is internal). Charging is bounded by the job's remaining budget,
/// and only an open job can be charged. The submitter alone can cancel at any time or reclaim
/// after the deadline, so funds are never stuck if the coordinator goes silent.
abstract contract JobEscrow is AccessControl, ReentrancyGuardTransient {
    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");

    enum JobStatus {
        None,
        Open,
        Completed,
        Cancelled,
        Reclaimed
    }

    /// @dev Slot 1: submitter, deadline, status. Slot 2: budget, charged (so a charge is one write).
    struct Job {
        address submitter;
        uint64 deadline;
        JobStatus status;
        uint128 budget;
        uint128 charged;
        bytes32 specHash;
        bytes32 resultHash;
    }

    /// @notice Sum over open jobs of budget - charged: the escrow part of what this contract owes.
    uint256 public escrowed;
    mapping(bytes32 jobId => Job) private _jobs;

    event JobCreated(
        bytes32 indexed jobId, address indexed submitter, bytes32 specHash, uint256 budget, uint64 deadline
    );
    event JobCharged(bytes32 indexed jobId, uint256 amount, uint256 charged);
    event JobCompleted(bytes32 indexed jobId, bytes32 resultHash, uint256 refund);
    event JobCancelled(bytes32 indexed jobId, uint256 refund);
    event JobReclaimed(bytes32 indexed jobId, uint256 refund);

    error ZeroAmount();
    error JobExists(bytes32 jobId);
    error DeadlineInPast(uint64 deadline);
    error JobNotOpen(bytes32 jobId, JobStatus status);
    error NotSubmitter(bytes32 jobId, address caller);
    error DeadlineNotReached(uint64 deadline);
    error OverBudget(bytes32 jobId, uint256 amount, uint256 remaining);

    /// @notice Open a job funded with msg.value; `deadline` is a unix time after which the
    /// submitter may reclaim what is left if the job is not completed.
    function createJob(bytes32 jobId, bytes32 specHash, uint64 deadline) external payable {
        if (msg.value == 0) revert ZeroAmount();
        Job storage job = _jobs[jobId];
        if (job.status != JobStatus.None) revert JobExists(jobId);
        if (deadline <= block.timestamp) revert DeadlineInPast(deadline);
        job.submitter = msg.sender;
        job.deadline = deadline;
        job.status = JobStatus.Open;
        job.budget = SafeCast.toUint128(msg.value);
        job.specHash = specHash;
        escrowed += msg.value;
        emit JobCreated(jobId, msg.sender, specHash, msg.value, deadline);
    }

    /// @notice The submitter closes the job and gets back budget - charged.
    function cancel(bytes32 jobId) external nonReentrant {
        uint256 refund = _closeBySubmitter(jobId, JobStatus.Cancelled);
        emit JobCancelled(jobId, refund);
        _refund(jobId, refund);
    }

    /// @notice After the deadline, the submitter takes back what is left of a job never completed.
    function reclaim(bytes32 jobId) external nonReentrant {
        uint64 deadline = _jobs[jobId].deadline;
        if (block.timestamp <= deadline) revert DeadlineNotReached(deadline);
        uint256 refund = _closeBySubmitter(jobId, JobStatus.Reclaimed);
        emit JobReclaimed(jobId, refund);
        _refund(jobId, refund);
    }

    /// @notice The coordinator records the result hash; the unspent budget goes back to the
    /// submitter. Charge the job's last work (postRoot) before this: a closed job cannot be charged.
    function recordResult(bytes32 jobId, bytes32 resultHash) external onlyRole(COORDINATOR_ROLE) nonReentrant {
        Job storage job = _jobs[jobId];
        if (job.status != JobStatus.Open) revert JobNotOpen(jobId, job.status);
        job.status = JobStatus.Completed;
        job.resultHash = resultHash;
        uint256 refund = job.budget - job.charged;
        escrowed -= refund;
        emit JobCompleted(jobId, resultHash, refund);
        _refund(jobId, refund);
    }

    /// @notice The whole record of `jobId` (status None if it does not exist).
    function getJob(bytes32 jobId) external view returns (Job memory) {
        return _jobs[jobId];
    }

    /// @notice What can still be charged to `jobId` (0 unless it is open).
    function remainingBudget(bytes32 jobId) external view returns (uint256) {
        Job storage job = _jobs[jobId];
        return job.status == JobStatus.Open ? job.budget - job.charged : 0;
    }

    /// @dev Move `amount` of an open job's budget out of escrow. The caller adds it to what it owes
    /// elsewhere and subtracts the total from `escrowed` (one write for a whole batch).
    function _charge(bytes32 jobId, uint256 amount) internal {
        Job storage job = _jobs[jobId];
        if (job.status != JobStatus.Open) revert JobNotOpen(jobId, job.status);
        uint256 remaining = job.budget - job.charged;
        if (amount > remaining) revert OverBudget(jobId, amount, remaining);
        job.charged += uint128(amount); // amount <= remaining < 2**128
        emit JobCharged(jobId, amount, job.charged);
    }

    function _closeBySubmitter(bytes32 jobId, JobStatus closed) private returns (uint256 refund) {
        Job storage job = _jobs[jobId];
        if (job.status != JobStatus.Open) revert JobNotOpen(jobId, job.status);
        if (msg.sender != job.submitter) revert NotSubmitter(jobId, msg.sender);
        job.status = closed;
        refund = job.budget - job.charged;
        escrowed -= refund;
    }

    function _refund(bytes32 jobId, uint256 amount) private {
        if (amount > 0) Address.sendValue(payable(_jobs[jobId].submitter), amount);
    }
}
