"""Reviews the referee could not decide (repositories.claims, services/verification/reviews.py),
on SQLite and PostgreSQL: a review whose parts spend the task's budget is undecided, not a
confirmation. The task is pending again with no attempt spent and never leased again to a node
that claimed it; a result from another node that passes verification finishes it (a "disproved"
event says so); --undecided-quorum further distinct claims confirm every claim on it; a restart of
the coordinator keeps all of that.

The referee's parts run in process here, each taking a clock's time (the real referee's child:
tests/security/test_undecided_review.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from sqlalchemy import select

from coordinator.db import schema as s
from coordinator.repositories import claims
from coordinator.repositories.store import Store
from coordinator.services.acceptance import ResultAcceptance
from tensorgrid.blobs import BlobStore
from tensorgrid.types import BlobRef, JobState
from tests.unit.coordinator import test_review_parts as parts
from tests.unit.coordinator.test_claim_reviews import A, B, C, _Runtime, rejections
from tests.unit.coordinator.test_claims import AVOID, TASK, claim
from tests.unit.coordinator.test_review_parts import Clock, Steps, reviews, stored_job
from tests.unit.coordinator.test_storage import CPU, JOB, TIMING, receipt

state, blobs, clock = parts.state, parts.blobs, parts.clock  # the fixtures: a store on each database

D, E = "0x" + "dd" * 20, "0x" + "ee" * 20
LATER = 10 * AVOID  # past every backoff and the failed-node avoidance window


def undecided(state: Store, blobs: BlobStore, clock: Clock, max_attempts: int = 2) -> None:
    """A and B claimed the job's one task; the referee's parts spend its budget (4 × 2 s) before the
    run is whole: undecided."""
    stored_job(state, blobs, max_attempts=max_attempts, time_limit_ms=2000)
    for i, node in enumerate((D, E)):  # beside A, B and C (add_nodes numbers its sessions from 0)
        state.nodes.register_node(node, CPU, f"{10 + i:064x}", 0, 10**9, f"nonce-{node}")
    r = reviews(state, blobs, Steps(clock=clock, part_s=3.0), _Runtime(time_s=1.0))
    asyncio.run(r.review_pending(lambda job, done: None))


def leases(state: Store, node: str, t: int = LATER) -> list[str]:
    return [lease.task_id for lease in state.tasks.lease_tasks(node, 1, t, TIMING)[0]]


def test_a_spent_budget_is_undecided_spends_nothing_and_bars_the_claimants(
    state: Store, blobs: BlobStore, clock: Clock
) -> None:
    undecided(state, blobs, clock, max_attempts=1)  # one attempt: a believed claim would fail the job
    [event] = [e for e in state.jobs.events_after(JOB, 0) if e.kind == claims.UNDECIDED]
    assert "claims undecided: the referee could not finish the task (over its review budget" in event.message
    assert "never to its claimants" in event.message
    with state.engine.connect() as conn:
        row = conn.execute(s.tasks.select().where(s.tasks.c.task_id == TASK)).one()
    assert row.state == "pending" and row.failures == 0 and row.undecided_ms is not None
    assert state.jobs.get_job(JOB).state == JobState.RUNNING
    assert rejections(state, A) == rejections(state, B) == 1  # not believed, not cleared
    assert leases(state, A) == leases(state, B) == []  # however long they wait
    assert leases(state, A, 100 * LATER) == []
    assert state.reviews.contested() == []  # and it is never reviewed again
    assert leases(state, C) == [TASK]


def test_further_distinct_claims_confirm_at_the_quorum(state: Store, blobs: BlobStore, clock: Clock) -> None:
    undecided(state, blobs, clock, max_attempts=3)
    assert state.tasks.quorum == 2  # --undecided-quorum's default
    assert claim(state, C, LATER) is True  # one more claim: not yet believed, a refusal
    assert state.tasks.get_task(TASK).state == "pending" and rejections(state, C) == 1
    assert leases(state, C, 2 * LATER) == []  # a claimant now: barred too
    assert state.reviews.contested() == []  # no second review
    assert claim(state, D, 2 * LATER) is False  # the quorum: all four claims believed, the job fails
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "confirmed by 2 more nodes after the referee could not decide" in job.error
    assert [rejections(state, n) for n in (A, B, C, D)] == [0, 0, 0, 0]  # believed: refusals taken back


def test_confirmed_at_the_quorum_with_attempts_left_every_later_claim_spends_one(
    state: Store, blobs: BlobStore, clock: Clock
) -> None:
    undecided(state, blobs, clock, max_attempts=6)
    assert claim(state, C, LATER) is True and claim(state, D, 2 * LATER) is True
    assert failures(state) == 4 and state.jobs.get_job(JOB).state == JobState.RUNNING  # A, B, C and D's
    assert claim(state, E, 3 * LATER) is True and failures(state) == 5  # believed at once, as any failure
    assert rejections(state, E) == 0
    assert leases(state, C, 4 * LATER) == leases(state, E, 4 * LATER) == []  # claimants stay barred


def failures(state: Store) -> int:
    with state.engine.connect() as conn:
        return int(conn.execute(select(s.tasks.c.failures).where(s.tasks.c.task_id == TASK)).scalar_one())


def test_the_same_further_node_claiming_again_does_not_reach_the_quorum(
    state: Store, blobs: BlobStore, clock: Clock
) -> None:
    undecided(state, blobs, clock, max_attempts=1)
    assert claim(state, C, LATER) is True
    with state.engine.begin() as conn:  # C gets the task again (as if the bar did not hold): no second vote
        assert claims.claim(conn, TASK, C, "invalid_input", 2 * LATER, quorum=2).confirmed is False
        again = claims.claim(conn, TASK, A, "invalid_input", 2 * LATER, quorum=2)
        assert again.confirmed is False  # nor a reviewed one's
    assert state.jobs.get_job(JOB).state == JobState.RUNNING and rejections(state, C) == 1


def test_a_result_from_a_node_that_never_claimed_finishes_the_task(
    state: Store, blobs: BlobStore, clock: Clock
) -> None:
    undecided(state, blobs, clock, max_attempts=1)
    assert claim(state, C, LATER) is True  # one further claim: below the quorum
    (lease,), _ = state.tasks.lease_tasks(D, 1, 2 * LATER, TIMING)
    signed = replace(receipt(lease.task_id, lease.attempt), input_hash=lease.input.sha256)
    ResultAcceptance(state.engine).accept_result(D, signed, BlobRef("ff" * 32, 1), None, 2 * LATER + 1)
    job = state.jobs.get_job(JOB)
    assert job.tasks_done == 1 and job.state != JobState.FAILED
    assert [rejections(state, n) for n in (A, B, C)] == [1, 1, 1]  # the claims were false: refusals stay
    [event] = [e for e in state.jobs.events_after(JOB, 0) if e.kind == claims.DISPROVED]  # said, once
    assert (event.node, event.task_index) == (D, 0)
    assert event.message.startswith("3 claimants' claims disproved by a non-claimant's result: accepted")
    assert "each claimant keeps the refusal it already holds, nothing more" in event.message


def test_a_result_for_a_task_never_undecided_records_no_disproval(state: Store, blobs: BlobStore) -> None:
    parts.stored_job(state, blobs)  # contested, not yet reviewed
    with state.engine.begin() as conn:  # as if the referee had run it cleanly and a node took it up
        claims.settle_review(conn, TASK, claims.CLEAN)
        conn.execute(s.tasks.update().where(s.tasks.c.task_id == TASK).values(state="pending"))
    (lease,), _ = state.tasks.lease_tasks(C, 1, LATER, TIMING)
    signed = replace(receipt(lease.task_id, lease.attempt), input_hash=lease.input.sha256)
    ResultAcceptance(state.engine).accept_result(C, signed, BlobRef("ff" * 32, 1), None, LATER + 1)
    assert state.jobs.get_job(JOB).tasks_done == 1
    assert [e for e in state.jobs.events_after(JOB, 0) if e.kind == claims.DISPROVED] == []


def test_a_restart_keeps_the_bar_and_the_claims_counted_so_far(
    state: Store, blobs: BlobStore, clock: Clock, db_url: str
) -> None:
    undecided(state, blobs, clock, max_attempts=3)
    assert claim(state, C, LATER) is True
    state.close()
    restarted = Store(db_url)  # a new coordinator process: only the database is left
    restarted.tasks.reviewed = frozenset({parts.KIND})
    try:
        assert leases(restarted, A, 2 * LATER) == leases(restarted, C, 2 * LATER) == []
        assert restarted.reviews.contested() == []
        assert claim(restarted, D, 3 * LATER) is False  # C's claim before the restart counted
        assert restarted.jobs.get_job(JOB).state == JobState.FAILED
    finally:
        restarted.close()


def test_a_verdict_that_is_not_one_is_refused(state: Store) -> None:
    with state.engine.begin() as conn, pytest.raises(ValueError, match="not a verdict"):
        claims.settle_review(conn, TASK, "maybe")
