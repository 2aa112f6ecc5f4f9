"""Failure claims on SQLite and PostgreSQL: one node's word that an input is bad does not fail a
task; a second node's does, and the first reporter's refusal is taken back; the same node's word
again is its own failure on a kind the referee does not review (test_repeat_claims: the others)."""

from __future__ import annotations

import pytest

from coordinator.repositories.store import Store
from coordinator.services.acceptance import ResultAcceptance
from tensorgrid.spec import task_id_for
from tensorgrid.types import BlobRef, ErrorKind, JobState, TaskError
from tests.unit.coordinator.test_storage import CPU, JOB, TIMING, add_nodes, make_job, receipt

A, B, C = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20
BAD = TaskError(ErrorKind.INVALID_INPUT, "the input is not a tensor file")
TASK = task_id_for(JOB, 0)
AVOID = 100_000  # past any backoff and the failed-node avoidance window


@pytest.fixture
def state(db_url: str):  # type: ignore[no-untyped-def]
    s = Store(db_url)
    yield s
    s.close()


def claim(state: Store, node: str, t: int, error: TaskError = BAD) -> bool:
    """The node leases the job's one task and says its input is bad; returns whether it was reissued."""
    (lease,), retry = state.tasks.lease_tasks(node, 1, t, TIMING)
    assert retry == 0
    return state.tasks.fail_task(node, lease.task_id, lease.attempt, error, t + 1)


def test_one_node_claiming_every_time_fails_the_task_only_as_its_own_failures_would(state: Store) -> None:
    """noop, a kind the referee does not review: the first claim spends nothing and costs its
    reporter a refusal; the same node claiming again, once leased the task again, is its own failure
    (an attempt and a failure, as an execution error), so the task's attempts bound it. (Before: it
    never failed the task, leased back to the same node after every avoid window, without end.)"""
    add_nodes(state, (A, CPU), (B, CPU))
    make_job(state, n=1, max_attempts=2)
    assert claim(state, A, AVOID) is True
    assert state.tasks.get_task(TASK).state == "pending" and state.jobs.get_job(JOB).task_failures == 0
    assert claim(state, A, 2 * AVOID) is True  # its own failure: one attempt of two
    assert state.jobs.get_job(JOB).task_failures == 1
    assert claim(state, A, 3 * AVOID) is False
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "failed 2 times" in job.error, job.error
    node = state.nodes.get_node(A)
    assert node is not None and node.rejections == 1 and node.failures == 3  # one refusal, two own failures
    events = [e.message for e in state.jobs.events_after(JOB, 0) if e.kind == "reissued"]
    assert events[0].startswith("unconfirmed invalid_input")
    assert events[1] == f"invalid_input: {BAD.message} (claimed before by this node alone: the node's own failure)"


def test_a_second_node_confirms_and_the_attempts_are_spent_as_before(state: Store) -> None:
    add_nodes(state, (A, CPU), (B, CPU), (C, CPU))
    make_job(state, n=1, max_attempts=3)
    assert claim(state, A, AVOID) is True
    assert state.nodes.get_node(A).rejections == 1  # type: ignore[union-attr]
    # B confirms: both claims count (2 of 3 attempts), A's refusal is taken back
    assert claim(state, B, 2 * AVOID, TaskError(ErrorKind.UNSAFE_INPUT, "pickle inside")) is True
    assert state.nodes.get_node(A).rejections == 0  # type: ignore[union-attr]
    assert state.nodes.get_node(B).rejections == 0  # type: ignore[union-attr]
    # confirmed now: the next claim, even A's again, spends the last attempt
    assert claim(state, A, 3 * AVOID) is False
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "failed 3 times" in job.error


def test_a_claim_refuted_by_an_honest_result_stays_against_its_reporter(state: Store) -> None:
    add_nodes(state, (A, CPU), (B, CPU))
    make_job(state, n=1, max_attempts=1)  # one attempt: today a single claim would fail the job
    assert claim(state, A, AVOID) is True
    assert state.tasks.lease_tasks(A, 1, AVOID + 2, TIMING)[0] == []  # A backs off, then avoids the task
    (lease,), _ = state.tasks.lease_tasks(B, 1, AVOID + 2, TIMING)
    assert lease.attempt == 2
    ResultAcceptance(state.engine).accept_result(B, receipt(lease.task_id, 2), BlobRef("ff" * 32, 1), None, AVOID + 3)
    assert state.jobs.get_job(JOB).tasks_done == 1
    assert state.nodes.get_node(A).rejections == 1  # type: ignore[union-attr]
    assert state.nodes.get_node(A).backoff_until_ms > AVOID  # type: ignore[union-attr]
