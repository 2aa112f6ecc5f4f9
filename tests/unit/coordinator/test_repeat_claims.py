"""One node claiming the same task again (repositories.claims), on SQLite and PostgreSQL: on a grid
with one eligible node, a task whose program raises (or whose input is truly invalid) was leased
back to that node after every avoid window, until the job's deadline, the node running it unpaid
each time. Now a second claim by the same node sends a reviewed task to the referee, as a second
node's does, and its verdict settles it: raises, the job fails and the node is paid by its draw;
clean, the claim is disproved and the node's further claims on it are its own failures (never
another review), so the task's attempts bound them. On a kind the referee does not review (noop),
the second claim is the node's own failure at once (test_claims).

The referee's runs are in process here (tests/security/test_program_errors.py runs a real node
daemon and the coordinator's sandboxed referee)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.repositories.ledger import claim_pay
from coordinator.repositories.store import Store
from tensorgrid.blobs import BlobStore
from tensorgrid.crypto import normalize_address
from tensorgrid.sandbox import SandboxFailure
from tensorgrid.types import JobState
from tests.unit.coordinator import test_review_parts as parts
from tests.unit.coordinator.test_claim_pay import REWARD, paid
from tests.unit.coordinator.test_claims import AVOID, TASK, claim
from tests.unit.coordinator.test_program_errors import RAISED, A, job_of_rows, node, task_failures
from tests.unit.coordinator.test_review_parts import Clock, turn
from tests.unit.coordinator.test_review_rows import ROWS, Rows, reviews
from tests.unit.coordinator.test_storage import CPU, JOB, TIMING, add_nodes, make_job

state, blobs, clock = parts.state, parts.blobs, parts.clock  # the fixtures: a store on each database


def events(state: Store, *kinds: str) -> list[str]:
    return [e.message for e in state.jobs.events_after(JOB, 0) if e.kind in kinds]


def after_review(n: int) -> int:
    """n avoid windows after now: a verdict is settled at the wall clock's time."""
    return int(time.time() * 1000) + n * AVOID


def claimed_twice(state: Store, blobs: BlobStore, tmp_path: Path) -> None:
    """The job's one task, three attempts; its only node A claims that the program raised, twice."""
    job_of_rows(state, blobs, tmp_path, (A, CPU))
    assert claim(state, A, AVOID, RAISED) is True
    assert state.tasks.get_task(TASK).state == "pending"
    assert claim(state, A, 2 * AVOID, RAISED) is True


def test_one_node_claiming_a_reviewed_task_twice_sends_it_to_review(
    state: Store, blobs: BlobStore, tmp_path: Path
) -> None:
    """Before: the second claim changed nothing, the task pending for the same node again."""
    claimed_twice(state, blobs, tmp_path)
    assert state.tasks.get_task(TASK).state == "contested"  # leased to nobody: the referee runs it
    assert state.reviews.contested()[0].task_id == TASK
    assert node(state, A) == (1, 1, 1)  # one refusal per task, however often it claims
    said = events(state, "contested")
    assert said == [f"program_error claimed again by the same node, leased it after its first claim "
                    f"(the referee runs the task): {RAISED.message}"]  # fmt: skip


def test_a_lone_claimant_whose_review_raises_ends_the_job_and_is_paid_by_its_draw(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    draws: list[int] = []
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: draws.append(n) or 0)  # it wins
    claimed_twice(state, blobs, tmp_path)
    r = reviews(state, blobs, Rows(clock, fail_at=ROWS - 1))  # the program raises on the last batch
    r.budget_factor = 100.0
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED, job  # at the verdict: no attempt was spent before
    assert job.error.startswith("task 0 failed for good: claims confirmed, the referee's run of it failed as its "
                                "claimant's did"), job.error  # fmt: skip
    assert f"row {ROWS - 1} is malformed" in job.error and "program_error" in job.error, job.error
    assert draws == [ROWS]  # one draw, over the task's rows
    assert paid(state) == {normalize_address(A): REWARD}
    assert node(state, A) == (0, 0, 0)  # its refusal taken back


def test_a_lone_claimant_disproved_is_not_reviewed_again_and_its_later_claims_are_its_own_failures(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """The referee cannot be looped: one review per task; the task's attempts bound the node's refusals."""
    claimed_twice(state, blobs, tmp_path)
    turn(reviews(state, blobs, Rows(clock)))  # every row runs cleanly: the claims were false
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
    assert node(state, A) == (1, 1, 1)  # its refusal stands
    assert claim(state, A, after_review(1), RAISED) is True  # a third claim: no review, its own failure
    assert state.tasks.get_task(TASK).state == "pending" and state.reviews.contested() == []
    assert task_failures(state) == 1 and node(state, A) == (2, 1, 2)  # an attempt, and a failure (its backoff)
    assert claim(state, A, after_review(2), RAISED) is True
    assert claim(state, A, after_review(3), RAISED) is False  # its third attempt spent: the job fails
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "failed 3 times" in job.error, job.error
    assert "disproved by the referee's run: the node's own failure" in job.error, job.error
    assert paid(state) == {}


def test_a_lone_claimant_confirmed_by_a_run_over_the_referees_limit_spends_the_attempts(
    state: Store, blobs: BlobStore, tmp_path: Path
) -> None:
    """Confirmed without ending the task (the referee's own limit): its later claims are believed."""

    def over(model_sha: str, settings: dict[str, object], source: Path, out: Path) -> None:
        raise SandboxFailure("out_of_memory", "over the referee's memory limit")

    claimed_twice(state, blobs, tmp_path)
    turn(reviews(state, blobs, over))  # type: ignore[arg-type]
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 1  # its claim confirmed
    assert claim(state, A, after_review(1), RAISED) is True
    assert state.reviews.contested() == [] and task_failures(state) == 2  # believed: no second review
    assert claim(state, A, after_review(2), RAISED) is False
    assert state.jobs.get_job(JOB).state == JobState.FAILED


def test_the_avoid_window_is_a_setting(state: Store) -> None:
    """--avoid-failed-node-ms: a node that failed a task gets it back once the window (and its backoff) passed."""
    add_nodes(state, (A, CPU))
    make_job(state, n=1, max_attempts=3)
    assert claim(state, A, AVOID) is True
    later = AVOID + 5_000  # past a first refusal's backoff, within the default 30 s window
    assert state.tasks.lease_tasks(A, 1, later, TIMING)[0] == []
    (lease,), _ = state.tasks.lease_tasks(A, 1, later, replace(TIMING, avoid_failed_ms=4_000))
    assert lease.task_id == TASK
