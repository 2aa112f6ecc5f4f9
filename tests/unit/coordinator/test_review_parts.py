"""Reviews run in parts (services/verification/reviews.py, review_parts.py), on SQLite and
PostgreSQL: a contested task of a kind the referee runs in parts (training) gets one referee
request per turn, from the state the part before left in a file. Only a whole run disproves the
claims; only a run that truly fails (raised, memory) confirms them; a run that has cost the
task's budget, or whose one-step parts time out twice in a row, is undecided (more nodes settle
it: test_undecided_reviews.py); a part over the request's time limit is charged and tried again; a restart or a stop
mid-review loses at most the part under way and blames no one.

The parts run in process here: a counter in the state file stands for the training state (the
real parts, in the referee's child: tests/security/test_training_sandbox.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from coordinator.db import schema
from coordinator.repositories.store import Store
from coordinator.services.sandboxed import Part
from coordinator.services.verification import reviews as reviews_module
from coordinator.services.verification.reviews import Reviews
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox import SandboxFailure
from tensorgrid.types import JobState
from tests.unit.coordinator import test_storage as storage
from tests.unit.coordinator.test_claim_reviews import A, B, _Runtime, contested, rejections
from tests.unit.coordinator.test_claims import AVOID, BAD, TASK
from tests.unit.coordinator.test_storage import CPU, JOB, TIMING, add_nodes

KIND = "noop"  # the job kind test_claim_reviews' store reviews; here run in parts
STEPS = 5


@pytest.fixture
def state(db_url: str):  # type: ignore[no-untyped-def]
    s = Store(db_url)
    s.tasks.reviewed = frozenset({KIND})
    yield s
    s.close()


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", 1 << 20)


class Clock:
    """The reviews' clock (their referee time), moved by the parts alone."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(reviews_module, "time", c)
    return c


class Steps:
    """A task of STEPS steps run one step a part; `fail` maps a part's number to what it raises.
    With a clock, each part takes `part_s` of it."""

    def __init__(
        self, fail: dict[int, Exception] | None = None, clock: Clock | None = None, part_s: float = 1.0
    ) -> None:
        self.fail = fail or {}
        self.clock, self.part_s = clock, part_s
        self.parts: list[int] = []  # the step each part started from

    def __call__(self, model: str, settings: dict[str, Any], source: Path, state: Path | None, out: Path) -> Part:
        start = int(state.read_text()) if state is not None else 0
        self.parts.append(start)
        if self.clock is not None:
            self.clock.now += self.part_s
        if len(self.parts) in self.fail:
            raise self.fail[len(self.parts)]
        out.write_text(str(start + 1))
        return Part(step=start + 1, steps=STEPS, done=start + 1 == STEPS)


def reviews(state: Store, blobs: BlobStore, steps: Steps, rt: _Runtime | None = None) -> Reviews:
    """A coordinator's review service (a new one stands for a restarted coordinator)."""
    r = Reviews(rt or _Runtime(), state, blobs, lambda *a: pytest.fail("not run whole"))  # type: ignore[arg-type]
    r.add_parts(KIND, steps, "it ran")
    return r


def turn(r: Reviews) -> list[str]:
    """One turn of the referee's loop for reviews; the jobs its verdict settled."""
    settled: list[str] = []
    asyncio.run(r.review_next(lambda job, done: settled.append(job)))
    return settled


def stored_job(state: Store, blobs: BlobStore, max_attempts: int = 2, time_limit_ms: int = 60_000) -> None:
    model, task_input = blobs.put_bytes(b"a program"), blobs.put_bytes(b"a shard")
    storage.make_job(state, 1, max_attempts=max_attempts, model=model, task_input=task_input, settings_json="{}")
    with state.engine.begin() as conn:
        conn.execute(schema.tasks.update().values(time_limit_ms=time_limit_ms))
    contested(state)


def waiting(state: Store) -> bool:
    """The task still waits for its review, and nobody has been believed or blamed for it."""
    return (
        state.tasks.get_task(TASK).state == "contested"
        and rejections(state, A) == rejections(state, B) == 1
        and state.jobs.get_job(JOB).state != JobState.FAILED
    )


def test_a_task_longer_than_one_request_is_run_a_part_a_turn_and_disproved_once_whole(
    state: Store, blobs: BlobStore
) -> None:
    stored_job(state, blobs)
    steps = Steps()
    r = reviews(state, blobs, steps)
    for part in range(STEPS - 1):
        assert turn(r) == [] and waiting(state)  # one request a turn: rulings run between them
        assert r.progress.cost(TASK).step == part + 1
    assert turn(r) == [JOB]
    assert steps.parts == list(range(STEPS))  # each part from the state the one before reached
    assert state.tasks.get_task(TASK).state == "pending" and rejections(state, A) == 1
    assert list(r.progress.root.iterdir()) == []  # the review's state is gone with it
    assert asyncio.run(r.review_next(lambda job, done: None)) is False


def test_a_restart_mid_review_goes_on_from_the_last_parts_state_and_blames_no_one(
    state: Store, blobs: BlobStore
) -> None:
    stored_job(state, blobs)
    steps = Steps()
    turn(reviews(state, blobs, steps))
    turn(reviews(state, blobs, steps))
    # the coordinator stops during the third part: no verdict, nothing charged
    stopping = _Runtime()
    stopping.stopping = True
    cut = Steps(fail={1: SandboxFailure("crashed", "the coordinator is stopping: its referee is closed")})
    r = reviews(state, blobs, cut, stopping)
    spent = r.progress.cost(TASK)
    assert turn(r) == [] and waiting(state) and r.progress.cost(TASK) == spent
    restarted = reviews(state, blobs, steps)  # a new process: only the files are left
    while state.tasks.get_task(TASK).state == "contested":
        turn(restarted)
    assert steps.parts == [0, 1, 2, 3, 4] and cut.parts == [2]  # nothing redone, nothing lost
    assert state.tasks.get_task(TASK).state == "pending"


def test_a_part_over_the_time_limit_is_charged_and_tried_again_not_believed(state: Store, blobs: BlobStore) -> None:
    stored_job(state, blobs)
    steps = Steps(fail={2: SandboxFailure("timeout", "over the referee's time limit")})
    r = reviews(state, blobs, steps)
    turn(r)
    turn(r)  # timed out: no state kept, charged
    assert waiting(state) and r.progress.cost(TASK).parts == 2 and r.progress.cost(TASK).step == 1
    asyncio.run(r.review_pending(lambda job, done: None))
    assert steps.parts == [0, 1, 1, 2, 3, 4]  # the timed-out part again, from the same state
    assert state.tasks.get_task(TASK).state == "pending"


@pytest.mark.parametrize(
    "failure",
    [
        SandboxFailure("error", "ExecutionError: training diverged: loss is nan at step 3"),
        SandboxFailure("out_of_memory", "over the referee's memory limit"),
    ],
)
def test_a_part_that_truly_fails_confirms_the_claims(state: Store, blobs: BlobStore, failure: Exception) -> None:
    stored_job(state, blobs)
    r = reviews(state, blobs, Steps(fail={3: failure}))
    asyncio.run(r.review_pending(lambda job, done: None))
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "claims confirmed" in job.error and failure.kind in job.error  # type: ignore[attr-defined]
    assert list(r.progress.root.iterdir()) == []


def test_a_review_that_spends_its_budget_is_undecided_and_the_budget_follows_the_task(
    state: Store, blobs: BlobStore, clock: Clock
) -> None:
    # the budget: factor × the task's time limit (here 4 × 2 s), at least one request (1 s)
    stored_job(state, blobs, time_limit_ms=2000)
    steps = Steps(clock=clock, part_s=3.0)
    r = reviews(state, blobs, steps, _Runtime(time_s=1.0))
    assert r.budget_s(state.reviews.contested()[0]) == 8.0
    asyncio.run(r.review_pending(lambda job, done: None))
    assert len(steps.parts) == 3 < STEPS  # 3 s a part: the third spends the 8 s
    task = state.tasks.get_task(TASK)
    assert task.state == "pending" and state.jobs.get_job(JOB).state == JobState.RUNNING  # nothing spent
    [said] = [e.message for e in state.jobs.events_after(JOB, 0) if e.kind == "undecided"]
    assert "over its review budget: 3 parts took 9s of the referee's 8s and reached step 3 of 5" in said
    assert rejections(state, A) == rejections(state, B) == 1  # not believed, not cleared


def test_an_inner_step_longer_than_a_request_twice_in_a_row_is_undecided(state: Store, blobs: BlobStore) -> None:
    stored_job(state, blobs)
    timeout = SandboxFailure("timeout", "over the referee's time limit")
    steps = Steps(fail={2: timeout, 3: timeout})  # one timeout may be a loaded machine; two in a row are not
    r = reviews(state, blobs, steps)
    turn(r)
    turn(r)
    assert waiting(state) and r.progress.cost(TASK).stalls == 1
    turn(r)
    assert r.progress.cost(TASK).stalls == 2
    assert turn(r) == [JOB] and steps.parts == [0, 1, 1]  # decided without a fourth run
    [said] = [e.message for e in state.jobs.events_after(JOB, 0) if e.kind == "undecided"]
    assert "one inner step is longer than a referee request: 2 parts of the smallest size timed out" in said
    assert state.tasks.get_task(TASK).state == "pending" and state.jobs.get_job(JOB).state == JobState.RUNNING


def test_reviews_take_turns_least_spent_first(state: Store, blobs: BlobStore, clock: Clock) -> None:
    """Two contested tasks: neither waits for the other's whole review."""
    model, task_input = blobs.put_bytes(b"a program"), blobs.put_bytes(b"a shard")
    storage.make_job(state, 2, max_attempts=2, model=model, task_input=task_input, settings_json="{}")
    add_nodes(state, (A, CPU), (B, CPU))
    t = 0
    while len(state.reviews.contested()) < 2 and t < 20:  # both nodes claim both tasks
        t += 1
        for node in (A, B):
            for lease in state.tasks.lease_tasks(node, 1, t * AVOID, TIMING)[0]:
                state.tasks.fail_task(node, lease.task_id, lease.attempt, BAD, t * AVOID + 1)
    assert len(state.reviews.contested()) == 2
    steps = Steps(clock=clock)
    r = reviews(state, blobs, steps)
    for _ in range(4):
        turn(r)
    assert [r.progress.cost(c.task_id).parts for c in state.reviews.contested()] == [2, 2]
    assert steps.parts == [0, 0, 1, 1]  # one part each in turn
