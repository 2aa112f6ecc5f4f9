// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Address} from "@openzeppelin/contracts/utils/Address.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IJobBook} from "./IJobBook.sol";

/// @title JobEscrow: each job's budget in native ETH, from creation to result or refund.
/// @notice Abstract: deployed as part of Settlement, whose postRoot is the only code that can
/// charge a job (`_charge` is internal). A job is priced per task at creation: its budget is
/// rewardPerTask × maxTasks, and a charge is a number of tasks, each at exactly that price,
/// never more tasks than were funded; only an open job can be charged.
///
/// No free work: once the coordinator has leased a job's first task it locks the escrow
/// (`lock`, also implied by the first charge). A locked job cannot be cancelled by its
/// submitter before the deadline, so the work done for it can always be charged; after the
/// deadline cancel and reclaim return what was not charged. An unlocked job can be cancelled
/// at any time. Funds are never stuck: after the deadline the submitter alone can take back
/// what is left if the coordinator went silent.
abstract contract JobEscrow is AccessControl, ReentrancyGuardTransient, IJobBook {
    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");

    enum JobStatus {
        None,
        Open,
        Completed,
        Cancelled,
        Reclaimed
    }

    /// @dev Slot 1: submitter, deadline, status, locked. Slot 2: rewardPerTask, maxTasks,
    /// tasksCharged (so a charge is one write). Budget = rewardPerTask × maxTasks.
    struct Job {
        address submitter;
        uint64 deadline;
        JobStatus status;
        bool locked;
        uint96 rewardPerTask;
        uint80 maxTasks;
        uint80 tasksCharged;
        bytes32 specHash;
        bytes32 resultHash;
    }

    /// @notice Sum over open jobs of budget - charged: the escrow part of what this contract owes.
    uint256 public escrowed;
    mapping(bytes32 jobId => Job) private _jobs;

    event JobCreated(
        bytes32 indexed jobId,
        address indexed submitter,
        bytes32 specHash,
        uint256 budget,
        uint64 deadline,
        uint256 rewardPerTask
    );
    event JobLocked(bytes32 indexed jobId);
    event JobReleased(bytes32 indexed jobId, uint256 refund);
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
    error OverBudget(bytes32 jobId, uint256 tasks, uint256 remainingTasks);
    error BudgetNotWhole(uint256 value, uint256 rewardPerTask);
    error LockedUntilDeadline(bytes32 jobId, uint64 deadline);

    /// @notice Open a job funded with msg.value = rewardPerTask × the number of tasks it pays for;
    /// `deadline` is a unix time after which the submitter may take back what was not charged.
    function createJob(bytes32 jobId, bytes32 specHash, uint64 deadline, uint256 rewardPerTask) external payable {
        if (msg.value == 0 || rewardPerTask == 0) revert ZeroAmount();
        if (msg.value % rewardPerTask != 0) revert BudgetNotWhole(msg.value, rewardPerTask);
        Job storage job = _jobs[jobId];
        if (job.status != JobStatus.None) revert JobExists(jobId);
        if (deadline <= block.timestamp) revert DeadlineInPast(deadline);
        job.submitter = msg.sender;
        job.deadline = deadline;
        job.status = JobStatus.Open;
        job.rewardPerTask = SafeCast.toUint96(rewardPerTask);
        job.maxTasks = SafeCast.toUint80(msg.value / rewardPerTask);
        job.specHash = specHash;
        escrowed += msg.value;
        emit JobCreated(jobId, msg.sender, specHash, msg.value, deadline, rewardPerTask);
    }

    /// @notice Coordinator: the job's first task is leased, so its submitter may no longer cancel
    /// before the deadline. Locking a locked job does nothing.
    function lock(bytes32 jobId) external onlyRole(COORDINATOR_ROLE) {
        Job storage job = _jobs[jobId];
        if (job.status != JobStatus.Open) revert JobNotOpen(jobId, job.status);
        if (job.locked) return;
        job.locked = true;
        emit JobLocked(jobId);
    }

    /// @notice The submitter closes the job and gets back what was not charged. A locked job
    /// only after its deadline.
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
        uint256 refund = _unspent(job);
        escrowed -= refund;
        emit JobCompleted(jobId, resultHash, refund);
        _refund(jobId, refund);
    }

    /// @notice The coordinator ends a job without a result (cancelled by its submitter, or failed)
    /// after charging its last work: the uncharged budget goes back to the submitter.
    function release(bytes32 jobId) external onlyRole(COORDINATOR_ROLE) nonReentrant {
        Job storage job = _jobs[jobId];
        if (job.status != JobStatus.Open) revert JobNotOpen(jobId, job.status);
        job.status = JobStatus.Cancelled;
        uint256 refund = _unspent(job);
        escrowed -= refund;
        emit JobReleased(jobId, refund);
        _refund(jobId, refund);
    }

    /// @notice The whole record of `jobId` (status None if it does not exist).
    function getJob(bytes32 jobId) external view returns (Job memory) {
        return _jobs[jobId];
    }

    /// @notice What can still be charged to `jobId` in wei (0 unless it is open).
    function remainingBudget(bytes32 jobId) external view returns (uint256) {
        Job storage job = _jobs[jobId];
        return job.status == JobStatus.Open ? _unspent(job) : 0;
    }

    /// @inheritdoc IJobBook
    function jobParty(bytes32 jobId) external view returns (address submitter, bool open) {
        Job storage job = _jobs[jobId];
        return (job.submitter, job.status == JobStatus.Open);
    }

    /// @dev Charge `tasks` tasks of an open job at its price, out of escrow, and lock it; returns
    /// the wei. The caller adds it to what it owes elsewhere and subtracts the total from
    /// `escrowed` (one write for a whole batch).
    function _charge(bytes32 jobId, uint256 tasks) internal returns (uint256 amount) {
        Job storage job = _jobs[jobId];
        if (job.status != JobStatus.Open) revert JobNotOpen(jobId, job.status);
        uint256 remaining = job.maxTasks - job.tasksCharged;
        if (tasks > remaining) revert OverBudget(jobId, tasks, remaining);
        if (!job.locked) job.locked = true; // work is being paid: no cancel before the deadline
        job.tasksCharged += uint80(tasks); // tasks <= remaining < 2**80
        amount = tasks * job.rewardPerTask;
        emit JobCharged(jobId, amount, uint256(job.tasksCharged) * job.rewardPerTask);
    }

    function _unspent(Job storage job) private view returns (uint256) {
        return uint256(job.maxTasks - job.tasksCharged) * job.rewardPerTask;
    }

    function _closeBySubmitter(bytes32 jobId, JobStatus closed) private returns (uint256 refund) {
        Job storage job = _jobs[jobId];
        if (job.status != JobStatus.Open) revert JobNotOpen(jobId, job.status);
        if (msg.sender != job.submitter) revert NotSubmitter(jobId, msg.sender);
        if (job.locked && block.timestamp <= job.deadline) revert LockedUntilDeadline(jobId, job.deadline);
        job.status = closed;
        refund = _unspent(job);
        escrowed -= refund;
    }

    function _refund(bytes32 jobId, uint256 amount) private {
        if (amount > 0) Address.sendValue(payable(_jobs[jobId].submitter), amount);
    }
}
