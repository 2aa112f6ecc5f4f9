"""Claims the referee reviews (repositories.claims, services/verification/reviews.py), on SQLite
and PostgreSQL: two nodes saying a task's input is bad send it to review rather than failing it;
a clean run by the referee disproves them (nothing spent, their refusals kept, later claims
unconfirmed), a failed run confirms them as before reviews existed.

The referee's run is in process here (the integration test in tests/security/test_peer_bounds.py
runs it in the coordinator's sandboxed child)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.repositories.claims import CLEAN, FAILED
from coordinator.repositories.store import Store
from coordinator.services.verification.reviews import Reviews
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox import SandboxFailure, SandboxLimits
from tensorgrid.types import BlobRef, ErrorKind, JobState, TaskError
from tests.unit.coordinator import test_storage as storage
from tests.unit.coordinator.test_claims import AVOID, BAD, TASK, claim
from tests.unit.coordinator.test_storage import CPU, JOB, SUBMITTER, TIMING, add_nodes

A, B, C = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20


@pytest.fixture
def state(db_url: str):  # type: ignore[no-untyped-def]
    s = Store(db_url)
    s.tasks.reviewed = frozenset({"noop"})  # the referee can run this job kind's tasks
    yield s
    s.close()


def make_job(state: Store, max_attempts: int, model: BlobRef | None = None, task_input: BlobRef | None = None) -> None:
    """The job's one task, whose settings a review hands the referee as they were leased."""
    storage.make_job(
        state, 1, max_attempts=max_attempts, model=model, task_input=task_input, settings_json='{"batch_size": 2}'
    )


def contested(state: Store) -> Store:
    """Two nodes have claimed the job's one task."""
    add_nodes(state, (A, CPU), (B, CPU), (C, CPU))
    assert claim(state, A, AVOID) is True
    assert claim(state, B, 2 * AVOID) is True  # reissued from the node's side: not failed
    return state


def rejections(state: Store, node: str) -> int:
    record = state.nodes.get_node(node)
    assert record is not None
    return record.rejections


def test_a_second_claim_sends_the_task_to_review_and_no_node_can_lease_it(state: Store) -> None:
    make_job(state, max_attempts=1)  # one attempt: a believed claim would fail the job
    contested(state)
    assert state.tasks.get_task(TASK).state == "contested"
    assert state.tasks.lease_tasks(C, 1, 3 * AVOID, TIMING)[0] == []
    assert [d.task_id for d in state.reviews.contested()] == [TASK]
    assert rejections(state, A) == rejections(state, B) == 1  # neither is believed yet
    assert state.jobs.get_job(JOB).state != JobState.FAILED
    events = [e for e in state.jobs.events_after(JOB, 0) if e.kind == "contested"]
    assert len(events) == 1 and "the referee runs the task" in events[0].message


def test_a_clean_run_disproves_the_claims_spends_nothing_and_later_claims_stay_unconfirmed(state: Store) -> None:
    make_job(state, max_attempts=1)
    contested(state)
    assert state.reviews.settle_review(TASK, CLEAN, "ran", 3 * AVOID) == JOB
    task = state.tasks.get_task(TASK)
    assert task.state == "pending"
    assert rejections(state, A) == rejections(state, B) == 1  # proven false: the refusals stay
    assert state.reviews.contested() == []
    assert state.reviews.settle_review(TASK, FAILED, "again", 3 * AVOID) is None  # ruled once
    # a third claimant is not believed either, and the task is not reviewed again
    assert claim(state, C, 4 * AVOID) is True
    assert state.tasks.get_task(TASK).state == "pending" and state.reviews.contested() == []
    assert rejections(state, C) == 1
    assert state.jobs.get_job(JOB).state != JobState.FAILED
    messages = [e.message for e in state.jobs.events_after(JOB, 0) if e.kind == "reissued"]
    assert any(m.startswith("invalid_input: claims disproved") for m in messages)


def test_a_failed_run_confirms_the_claims_as_before(state: Store) -> None:
    make_job(state, max_attempts=3)
    contested(state)
    assert state.reviews.settle_review(TASK, FAILED, "error: ValueError: bad", 3 * AVOID) == JOB
    assert rejections(state, A) == rejections(state, B) == 0  # believed: the refusals are taken back
    assert state.tasks.get_task(TASK).state == "pending"  # two of three attempts spent
    assert claim(state, C, 4 * AVOID) is False  # confirmed claims: the next one spends the last attempt
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "failed 3 times" in job.error


def test_a_failed_run_on_the_last_attempts_fails_the_job_with_the_referees_reason(state: Store) -> None:
    make_job(state, max_attempts=2)
    contested(state)
    state.reviews.settle_review(TASK, FAILED, "error: ValueError: 3 dims", 3 * AVOID)
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED
    assert "failed 2 times" in job.error and "claims confirmed" in job.error and "3 dims" in job.error


def test_a_cancelled_jobs_contested_task_is_cancelled_and_never_reviewed(state: Store) -> None:
    make_job(state, max_attempts=1)
    contested(state)
    state.jobs.cancel_job(JOB, SUBMITTER, 3 * AVOID)
    assert state.tasks.get_task(TASK).state == "cancelled"
    assert state.reviews.contested() == []
    assert state.reviews.settle_review(TASK, CLEAN, "late", 4 * AVOID) is None


def test_tasks_the_referee_cannot_run_keep_the_second_claim_rule(db_url: str) -> None:
    state = Store(db_url)  # no reviewed kinds
    try:
        make_job(state, max_attempts=2)
        add_nodes(state, (A, CPU), (B, CPU))
        assert claim(state, A, AVOID) is True
        assert claim(state, B, 2 * AVOID) is False  # believed at once: both attempts spent
        job = state.jobs.get_job(JOB)
        assert job.state == JobState.FAILED and "failed 2 times" in job.error
    finally:
        state.close()


# -- the service: what the referee's run decides -----------------------------------------------


class _Runtime:
    def __init__(self, time_s: float = 600.0) -> None:
        self.sandbox = SandboxLimits(time_s=time_s)
        self.stopping = False

    async def db(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    db_bulk = work = refereed = db

    def now_ms(self) -> int:
        return int(time.time() * 1000)


def review(state: Store, blobs: BlobStore, run: Any) -> list[tuple[str, bool]]:
    settled: list[tuple[str, bool]] = []
    reviews = Reviews(_Runtime(), state, blobs, run)  # type: ignore[arg-type]
    asyncio.run(reviews.review_pending(lambda job, done: settled.append((job, done))))
    return settled


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", 1 << 20)


def stored_job(state: Store, blobs: BlobStore, max_attempts: int) -> None:
    model, task_input = blobs.put_bytes(b"a program"), blobs.put_bytes(b"rows")
    make_job(state, max_attempts, model=model, task_input=task_input)


def test_the_referee_running_the_task_cleanly_puts_it_back_and_wakes_the_grid(state: Store, blobs: BlobStore) -> None:
    stored_job(state, blobs, max_attempts=1)
    contested(state)
    runs: list[tuple[str, dict[str, Any], bytes]] = []

    def run(model_sha: str, settings: dict[str, Any], source: Path, out: Path) -> None:
        runs.append((model_sha, settings, source.read_bytes()))
        out.write_bytes(b"outputs")

    assert review(state, blobs, run) == [(JOB, False)]
    assert runs == [(blobs.put_bytes(b"a program").sha256, {"batch_size": 2}, b"rows")]  # the task as leased
    assert state.tasks.get_task(TASK).state == "pending"
    assert review(state, blobs, run) == [] and len(runs) == 1  # reviewed once


@pytest.mark.parametrize(
    "failure",
    [
        SandboxFailure("error", "ValueError: input tensor 'x' has 3 dims"),  # the program raised
        OSError("the child could not start"),
    ],
)
def test_a_run_that_does_not_end_cleanly_confirms_the_claims(
    state: Store, blobs: BlobStore, failure: Exception
) -> None:
    stored_job(state, blobs, max_attempts=2)
    contested(state)

    def run(model_sha: str, settings: dict[str, Any], source: Path, out: Path) -> None:
        raise failure

    assert review(state, blobs, run) == [(JOB, False)]
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "claims confirmed" in job.error and str(failure)[:20] in job.error


def test_a_run_cut_short_by_the_coordinator_stopping_is_no_verdict(state: Store, blobs: BlobStore) -> None:
    stored_job(state, blobs, max_attempts=2)
    contested(state)
    rt = _Runtime()
    rt.stopping = True

    def run(model_sha: str, settings: dict[str, Any], source: Path, out: Path) -> None:
        raise SandboxFailure("crashed", "the coordinator is stopping: its referee is closed")

    reviews = Reviews(rt, state, blobs, run)  # type: ignore[arg-type]
    assert asyncio.run(reviews.review_next(lambda job, done: pytest.fail("settled"))) is False  # and no more asked
    assert state.tasks.get_task(TASK).state == "contested"  # reviewed after the restart
    assert rejections(state, A) == rejections(state, B) == 1 and state.jobs.get_job(JOB).state != JobState.FAILED


def test_a_task_whose_input_is_gone_is_confirmed_without_a_run(state: Store, blobs: BlobStore) -> None:
    make_job(state, max_attempts=2, model=blobs.put_bytes(b"a program"))  # its input blob was never stored
    contested(state)
    assert review(state, blobs, lambda *a: pytest.fail("nothing to run")) == [(JOB, False)]
    assert "not in the blob store" in state.jobs.get_job(JOB).error


def test_unsafe_input_claims_are_reviewed_too(state: Store) -> None:
    make_job(state, max_attempts=1)
    add_nodes(state, (A, CPU), (B, CPU))
    unsafe = TaskError(ErrorKind.UNSAFE_INPUT, "a pickle inside the input")
    assert claim(state, A, AVOID, unsafe) is True and claim(state, B, 2 * AVOID, BAD) is True
    assert state.tasks.get_task(TASK).state == "contested"
    state.reviews.settle_review(TASK, FAILED, "error: UnsafeFileError", 3 * AVOID)
    assert "(unsafe_input)" in state.jobs.get_job(JOB).error  # what the first claim said
