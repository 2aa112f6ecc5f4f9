"""JobEscrow (inside Settlement) on anvil: create, lock, cancel, reclaim, recordResult, release."""

from __future__ import annotations

import pytest

from tensorgrid.chain import JobStatus
from tests.chain.conftest import ETH, Chain, new_id
from tests.chain.helpers import open_job, revert


def test_create_job_records_everything(chain: Chain) -> None:
    job = new_id()
    deadline = open_job(chain.submitter, job, 3 * ETH)
    info = chain.admin.job(job)
    assert info.submitter == chain.submitter.address
    assert (info.deadline, info.status, info.budget, info.charged) == (deadline, JobStatus.OPEN, 3 * ETH, 0)
    assert (info.reward_per_task, info.max_tasks, info.tasks_charged, info.locked) == (1, 3 * ETH, 0, False)
    assert info.spec_hash == "ab" * 32
    assert chain.admin.remaining_budget(job) == 3 * ETH
    assert chain.admin.owed() == chain.admin.balance(chain.deployment.settlement) == 3 * ETH


def test_create_job_rules(chain: Chain) -> None:
    job = new_id()
    now = chain.submitter.chain_time()
    with revert("ZeroAmount"):
        chain.submitter.create_job(job, new_id(), now + 100, 0, reward_per_task=1)
    with revert("ZeroAmount"):
        chain.submitter.create_job(job, new_id(), now + 100, ETH, reward_per_task=0)
    with revert("BudgetNotWhole"):  # a budget pays for whole tasks
        chain.submitter.create_job(job, new_id(), now + 100, ETH, reward_per_task=3)
    with revert("DeadlineInPast"):
        chain.submitter.create_job(job, new_id(), now, ETH, reward_per_task=1)
    open_job(chain.submitter, job, ETH)
    with revert("JobExists"):  # nobody can take over or top up an existing id
        chain.outsider.create_job(job, new_id(), now + 100, ETH, reward_per_task=1)
    assert chain.admin.job(new_id()).status == JobStatus.NONE


def test_cancel_of_a_job_never_started_refunds_everything(chain: Chain) -> None:
    job = new_id()
    open_job(chain.submitter, job, 5 * ETH)
    before = chain.submitter.balance()
    result = chain.submitter.cancel(job)
    assert chain.submitter.balance() == before + 5 * ETH - result.fee
    assert chain.admin.job(job).status == JobStatus.CANCELLED
    with revert("JobNotOpen"):
        chain.submitter.cancel(job)
    with revert("JobNotOpen"):  # a closed job can be neither charged nor locked
        chain.coordinator.post_root(1, new_id(), [(job, 1)])
    with revert("JobNotOpen"):
        chain.coordinator.lock_job(job)
    assert chain.admin.owed() == chain.admin.balance(chain.deployment.settlement) == 0


def test_cancel_during_lock_is_refused_until_the_deadline(chain: Chain) -> None:
    """No free work: once the coordinator locked the escrow (first lease) the submitter cannot
    walk away with the results before the deadline; the work done is charged meanwhile."""
    job = new_id()
    open_job(chain.submitter, job, 5 * ETH, lifetime=500)
    chain.coordinator.lock_job(job)
    chain.coordinator.lock_job(job)  # idempotent: a retried lock is harmless
    assert chain.admin.job(job).locked
    with revert("LockedUntilDeadline"):
        chain.submitter.cancel(job)
    chain.coordinator.post_root(1, new_id(), [(job, 2 * ETH)])  # the work done so far is charged
    with revert("LockedUntilDeadline"):
        chain.submitter.cancel(job)
    assert chain.admin.job(job).status == JobStatus.OPEN


def test_cancel_after_the_deadline_refunds_only_the_unearned_part(chain: Chain) -> None:
    job = new_id()
    open_job(chain.submitter, job, 5 * ETH, lifetime=500)
    chain.coordinator.post_root(1, new_id(), [(job, 2 * ETH)])  # a charge locks the job too
    assert chain.admin.job(job).locked
    with revert("LockedUntilDeadline"):
        chain.submitter.cancel(job)
    chain.advance(501)
    before = chain.submitter.balance()
    result = chain.submitter.cancel(job)
    assert chain.submitter.balance() == before + 3 * ETH - result.fee  # the 2 ETH earned stay with the nodes
    assert chain.admin.job(job).status == JobStatus.CANCELLED
    assert chain.admin.owed() == chain.admin.balance(chain.deployment.settlement) == 2 * ETH  # the claim pool


def test_only_the_coordinator_locks_and_releases(chain: Chain) -> None:
    job = new_id()
    open_job(chain.submitter, job, 5 * ETH)
    for caller in (chain.submitter, chain.guardian, chain.outsider):
        with revert("AccessControlUnauthorizedAccount"):
            caller.lock_job(job)
        with revert("AccessControlUnauthorizedAccount"):
            caller.release_job(job)
    chain.coordinator.post_root(1, new_id(), [(job, ETH)])
    before = chain.submitter.balance()
    chain.coordinator.release_job(job)  # ended without a result: what was not charged goes back
    assert chain.submitter.balance() == before + 4 * ETH
    assert chain.admin.job(job).status == JobStatus.CANCELLED
    with revert("JobNotOpen"):
        chain.coordinator.release_job(job)


@pytest.mark.parametrize("who", ["coordinator", "admin", "outsider"])
def test_only_the_submitter_may_cancel_or_reclaim(chain: Chain, who: str) -> None:
    caller = {"coordinator": chain.coordinator, "admin": chain.admin, "outsider": chain.outsider}[who]
    job = new_id()
    open_job(chain.submitter, job, ETH, lifetime=100)
    with revert("NotSubmitter"):
        caller.cancel(job)
    chain.advance(101)
    with revert("NotSubmitter"):
        caller.reclaim(job)
    assert chain.admin.job(job).status == JobStatus.OPEN


def test_reclaim_only_after_deadline(chain: Chain) -> None:
    job = new_id()
    open_job(chain.submitter, job, 4 * ETH, lifetime=500)
    chain.coordinator.post_root(1, new_id(), [(job, ETH)])
    with revert("DeadlineNotReached"):
        chain.submitter.reclaim(job)
    chain.advance(501)
    before = chain.submitter.balance()
    result = chain.submitter.reclaim(job)
    assert chain.submitter.balance() == before + 3 * ETH - result.fee
    assert chain.admin.job(job).status == JobStatus.RECLAIMED
    with revert("JobNotOpen"):
        chain.submitter.reclaim(job)
    with revert("JobNotOpen"):
        chain.coordinator.record_result(job, new_id())


def test_record_result_completes_and_refunds(chain: Chain) -> None:
    job = new_id()
    open_job(chain.submitter, job, 4 * ETH, lifetime=100)
    chain.coordinator.post_root(1, new_id(), [(job, ETH)])
    before = chain.submitter.balance()
    result_hash = new_id()
    chain.coordinator.record_result(job, result_hash)
    assert chain.submitter.balance() == before + 3 * ETH
    info = chain.admin.job(job)
    assert (info.status, info.result_hash, info.charged) == (JobStatus.COMPLETED, result_hash, ETH)
    with revert("JobNotOpen"):
        chain.coordinator.record_result(job, result_hash)
    chain.advance(101)
    with revert("JobNotOpen"):  # completed: nothing to reclaim
        chain.submitter.reclaim(job)
    with revert("JobNotOpen"):
        chain.submitter.cancel(job)


def test_record_result_fully_spent_job(chain: Chain) -> None:
    job = new_id()
    open_job(chain.submitter, job, ETH)
    chain.coordinator.post_root(1, new_id(), [(job, ETH)])
    before = chain.submitter.balance()
    chain.coordinator.record_result(job, new_id())
    assert chain.submitter.balance() == before
    assert chain.admin.owed() == ETH


@pytest.mark.parametrize("who", ["submitter", "admin", "guardian", "outsider"])
def test_only_the_coordinator_may_record_results(chain: Chain, who: str) -> None:
    caller = {"submitter": chain.submitter, "admin": chain.admin, "guardian": chain.guardian,
              "outsider": chain.outsider}[who]  # fmt: skip
    job = new_id()
    open_job(chain.submitter, job, ETH)
    with revert("AccessControlUnauthorizedAccount"):
        caller.record_result(job, new_id())
    with revert("JobNotOpen"):
        chain.coordinator.record_result(new_id(), new_id())
