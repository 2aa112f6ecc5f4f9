"""Failure claims on SQLite and PostgreSQL: one node's word that an input is bad does not fail a
task; a second node's does, and the first reporter's refusal is taken back."""

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


def test_one_node_claiming_every_time_never_fails_the_task_and_pays_for_it(state: Store) -> None:
    add_nodes(state, (A, CPU), (B, CPU))
    make_job(state, n=1, max_attempts=2)
    for i in range(1, 5):  # far more claims than the task has attempts
        assert claim(state, A, i * AVOID) is True
        assert state.tasks.get_task(TASK).state == "pending"
    node = state.nodes.get_node(A)
    assert node is not None and node.rejections == 1  # once per task, however often it repeats
    assert state.jobs.get_job(JOB).state != JobState.FAILED
    events = [e for e in state.jobs.events_after(JOB, 0) if e.kind == "reissued"]
    assert events and all(e.message.startswith("unconfirmed invalid_input") for e in events)


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
