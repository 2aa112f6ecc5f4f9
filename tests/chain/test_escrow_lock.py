"""No free work, through the coordinator's ledger and outbox on a real anvil: the escrow is locked
at the first lease, the result is held back until then, a job cancelled midway pays for the work
done and gets back the rest, and a submitter who closes the escrow before the lock lands gets no
result."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coordinator.kinds.noop import NoopKind
from coordinator.kinds.registry import Registry
from coordinator.repositories.store import Store
from coordinator.services.acceptance import ResultAcceptance
from coordinator.services.ledger import Ledger
from coordinator.services.report import Reports
from tensorgrid.chain import JobStatus
from tensorgrid.types import BlobRef
from tests.chain.conftest import ETH, Chain, new_id
from tests.chain.helpers import open_job
from tests.unit.coordinator.test_storage import CPU, SUBMITTER, TIMING, add_nodes, make_job, receipt

REWARD = ETH // 100
TASKS = 4
NODE = "0x" + "a1" * 20


@pytest.fixture
def state(db_url: str) -> Iterator[Store]:
    st = Store(db_url)
    yield st
    st.close()


def run_once(state: Store, chain: Chain) -> int:
    outbox = Ledger(state.engine).outbox(chain.coordinator, backoff_ms=(50, 200))
    try:
        return outbox.process_once()
    finally:
        outbox.close()


def priced_job(chain: Chain, state: Store) -> str:
    """A job escrowed on chain (TASKS tasks at REWARD) and stored, priced, by the coordinator."""
    job = new_id()
    open_job(chain.submitter, job, REWARD * TASKS, reward=REWARD)
    Ledger(state.engine).set_job_price(job, REWARD, REWARD * TASKS)
    make_job(state, n=TASKS, job_id=job)
    add_nodes(state, (NODE, CPU))
    return job


def accept(state: Store, job: str, count: int, now_ms: int) -> BlobRef:
    """The node leases and delivers `count` tasks, which are accepted and credited."""
    leases, _ = state.tasks.lease_tasks(NODE, count, now_ms, TIMING)
    out = BlobRef("ff" * 32, 3)
    for lz in leases:
        r = receipt(lz.task_id, lz.attempt)
        ResultAcceptance(state.engine).accept_result(NODE, r.__class__(**{**r.__dict__, "job_id": job}), out, None,
                                                     now_ms + 1)  # fmt: skip
    return out


def test_the_first_lease_locks_the_escrow_and_the_result_waits_for_it(chain: Chain, state: Store) -> None:
    job = priced_job(chain, state)
    ledger = Ledger(state.engine)
    assert not ledger.result_withheld(job)  # nothing leased, nothing locked, nothing to release yet
    state.tasks.lease_tasks(NODE, 1, 10, TIMING)
    assert ledger.result_withheld(job)  # the lock is queued, not yet on chain
    assert run_once(state, chain) == 1
    assert chain.admin.job(job).locked
    assert not ledger.result_withheld(job)
    with pytest.raises(Exception, match="LockedUntilDeadline"):
        chain.submitter.cancel(job)


def test_a_job_cancelled_midway_pays_the_work_done_and_refunds_the_rest(chain: Chain, state: Store) -> None:
    job = priced_job(chain, state)
    accept(state, job, 2, 10)  # two of four tasks done and credited
    assert run_once(state, chain) == 1  # the lock
    state.jobs.cancel_job(job, SUBMITTER, 20)  # the submitter stops the job through the coordinator
    ledger = Ledger(state.engine)
    assert ledger.close_ended_jobs(30) == 1
    assert ledger.close_ended_jobs(31) == 0  # queued once
    before = chain.submitter.balance()
    assert run_once(state, chain) == 2  # post_root charging the two tasks, then release
    escrow = chain.admin.job(job)
    assert (escrow.status, escrow.tasks_charged, escrow.charged) == (JobStatus.CANCELLED, 2, 2 * REWARD)
    assert chain.submitter.balance() == before + 2 * REWARD  # the unspent half, nothing more
    assert ledger.earnings(NODE)["cumulative_wei"] == 2 * REWARD  # and the node keeps its credits


def test_closing_the_escrow_before_the_lock_lands_withholds_the_result_for_good(chain: Chain, state: Store) -> None:
    job = priced_job(chain, state)
    out = accept(state, job, TASKS, 10)  # all done before the lock reaches the chain
    state.jobs.finish_job(job, out, "", 20)  # ... and assembled
    reports = Reports(state, Registry([NoopKind()]))
    assert reports.with_verification(state.jobs.get_job(job)).result is None  # held until the lock lands
    chain.submitter.cancel(job)  # the submitter front-runs the lock
    assert run_once(state, chain) == 1  # the lock fails (JobNotOpen), dealt with: nothing blocks
    ledger = Ledger(state.engine)
    assert ledger.status()["blocked_by"] is None
    assert ledger.result_withheld(job) and ledger.withheld_blob(out.sha256) == job  # never released
    assert reports.with_verification(state.jobs.get_job(job)).result is None
    assert ledger.earnings(NODE)["cumulative_wei"] == 0  # void: the escrow it would be paid from is gone
    assert ledger.close_ended_jobs(30) == 0  # a failed lock leaves no escrow to release


def test_a_job_locked_and_finished_releases_its_result(chain: Chain, state: Store) -> None:
    job = priced_job(chain, state)
    out = accept(state, job, TASKS, 10)
    state.jobs.finish_job(job, out, "", 20)
    assert Ledger(state.engine).withheld_blob(out.sha256) == job
    assert run_once(state, chain) == 1  # the lock
    assert Ledger(state.engine).withheld_blob(out.sha256) is None
    assert Reports(state, Registry([NoopKind()])).with_verification(state.jobs.get_job(job)).result == out
