"""A CPU node's OUT_OF_MEMORY report on a training task, on SQLite and PostgreSQL: a claim that the
submitter's train program needs more than the task's memory limit (repositories.limit_claims, "Over its
memory limit"), reviewed by the referee's measured run of the task in parts
(services.verification.memory_parts, kinds.training.review.measure_training): the first part one
inner step from the round's weights, each later one at most as many steps as ran before it, the
state carried between them. A part past 1.25× the limit confirms (the task ends alone, its round
closes without it, the claimants paid by the steps the referee's run reached); every step run
within half of it disproves (the claimants keep their refusals, the task goes to other nodes);
anything else is undecided, never disproved before the last step. Before, the training kind
registered no measure: each report was its node's own failure (an attempt spent, no review, no pay).

The kind is the coordinator's own (TrainingKind registering on a real Verification); only its
measured part is given here (Parts: a program whose peak per inner step is scripted). The real
measured run: tests/security/test_memory_training.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coordinator.db import schema
from coordinator.kinds.training import TrainingKind
from coordinator.repositories.ledger import claim_pay
from coordinator.repositories.store import Store
from coordinator.repositories.tasks import end_task
from coordinator.services.verification.manager import Verification
from coordinator.services.verification.review_parts import ReviewParts
from coordinator.services.verification.runs import InParts
from tensorgrid.blobs import BlobStore
from tensorgrid.crypto import normalize_address
from tensorgrid.sandbox import SandboxLimits
from tensorgrid.sandbox.measured import Measured
from tensorgrid.types import JobState
from tests.unit.coordinator import test_review_parts as parts
from tests.unit.coordinator.test_claim_pay import REWARD, paid
from tests.unit.coordinator.test_claim_reviews import _Runtime
from tests.unit.coordinator.test_claims import AVOID, TASK, TIMING, claim
from tests.unit.coordinator.test_memory_claims import LIMIT, OOM, MiB
from tests.unit.coordinator.test_program_errors import A, B, job_of_rows, node, task_failures
from tests.unit.coordinator.test_review_parts import Clock, turn
from tests.unit.coordinator.test_storage import CPU, JOB

state, blobs, clock = parts.state, parts.blobs, parts.clock  # the fixtures: a store on each database

C = "0x" + "c" * 40  # a third node, which never claimed
KIND = "training"


class Parts:
    """The referee's measured parts of a training task of `steps` inner steps whose run holds
    peak(step) bytes at each step; each part takes part_s of the referee's time. What it was asked:
    (the step it started from, at most how many steps, stop at, mark at)."""

    def __init__(self, steps: int, peak: Callable[[int], int], part_s: float = 1.0) -> None:
        self.steps, self.peak, self.part_s = steps, peak, part_s
        self.asked: list[tuple[int, int, int, int]] = []

    def __call__(
        self, model: Path, source: Path, settings: dict[str, Any], state: Path | None, out: Path, most: int,
        stop: int, mark: int,
    ) -> Measured:  # fmt: skip
        assert model.exists() and source.exists() and settings["inner"]["steps"] == self.steps
        start = 0 if state is None else json.loads(state.read_text())["step"]
        self.asked.append((start, most, stop, mark))
        end = min(self.steps, start + most)
        held = max(self.peak(s) for s in range(start, end))
        if held > stop:  # killed the moment it passed stop: no answer, no state
            return Measured(held, True, self.part_s, None)
        out.write_text(json.dumps({"step": end}))
        answer = {"step": end, "steps": self.steps, "done": end >= self.steps}
        return Measured(held, False, self.part_s, self.part_s, answer=answer)


def grid(state: Store, blobs: BlobStore, tmp_path: Path, run: Parts, *, time_limit_ms: int = 4000) -> Verification:
    """A training job's one task (run.steps inner steps, a memory limit of LIMIT) on a coordinator
    whose training kind registered its measure (as app.py wires it), that measure's part given."""
    v = Verification(_Runtime(time_s=10.0), state, blobs, b"secret", None)  # type: ignore[arg-type]
    v.rt.sandbox = SandboxLimits(time_s=10.0, memory_bytes=4 << 30)
    training = TrainingKind(v.rt, state, blobs, v)  # type: ignore[arg-type]
    if KIND in v.reviews.measured_parts:  # registered by the kind (main: none, so no claim at all)
        v.add_measure(KIND, InParts(run), training.task_kinds)  # its part replaced by the script
    reviews = v.reviews
    state.tasks.reviewed = frozenset(training.task_kinds)
    state.tasks.measured = frozenset(reviews.measures) | frozenset(reviews.measured_parts)  # app.py
    state.reviews.goes_on = frozenset(training.task_kinds)  # app.py: training's job goes on without a task
    job_of_rows(state, blobs, tmp_path, (A, CPU), (B, CPU), (C, CPU))
    settings = {"inner": {"steps": run.steps}, "blobs": {}, "device": "any"}
    with state.engine.begin() as conn:
        conn.execute(schema.jobs.update().values(kind=KIND))
        t = {"memory_limit_bytes": LIMIT, "time_limit_ms": time_limit_ms, "settings": json.dumps(settings)}
        conn.execute(schema.tasks.update().values(kind=KIND, **t))
    return v


def claimed_and_reviewed(state: Store, v: Verification, clock: Clock) -> None:
    """Both nodes' OOM claims; the referee's review run to its verdict, one part a turn."""
    assert claim(state, A, AVOID, OOM) is True
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0  # a claim: no attempt
    assert claim(state, B, 2 * AVOID, OOM) is True
    assert state.tasks.get_task(TASK).state == "contested"
    while state.tasks.get_task(TASK).state == "contested":
        turn(v.reviews)


def events(state: Store, kind: str) -> list[str]:
    return [e.message for e in state.jobs.events_after(JOB, 0) if e.kind == kind]


def test_a_program_over_its_limit_on_one_shard_ends_the_task_and_pays_the_claimants_by_steps(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submitter's program small at intake's one step (and on other shards) that allocates past
    its limit at inner step 3 of this shard: the referee's parts meet it; the task ends, not the job
    (its round closes without it); the claimants are paid by the steps run before it passed."""
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: 1)  # wins with probability 2/10: won
    run = Parts(10, lambda s: 200 * MiB if s < 3 else 900 * MiB)
    v = grid(state, blobs, tmp_path, run)
    claimed_and_reviewed(state, v, clock)
    stop = int(1.25 * LIMIT)
    assert run.asked == [(0, 1, stop, LIMIT), (1, 1, stop, LIMIT), (2, 2, stop, LIMIT)]  # 1, 1, 2 steps
    assert state.tasks.get_task(TASK).state == "failed"
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.RUNNING and job.task_failures == 1, job  # its round goes on without it
    [ended] = events(state, "ended")
    assert "out_of_memory" in ended and "needs more than its memory limit of 512 MiB" in ended, ended
    assert "after inner step 2" in ended and "its job goes on without it" in ended, ended
    assert node(state, A) == node(state, B) == (0, 0, 0)  # unblamed: their refusals taken back
    [drawn] = events(state, claim_pay.EVENT)
    assert "after 2 of its 10 units of work" in drawn, drawn  # the steps its parts ran before passing
    assert paid(state) == {}  # a running job's escrow is owed to its other tasks
    with state.engine.begin() as conn:  # the job ends (its last round closes, or it fails)
        conn.execute(schema.jobs.update().values(state="succeeded"))
        claim_pay.pay(conn, JOB, 1, final=True)
    assert paid(state) == {normalize_address(A): REWARD, normalize_address(B): REWARD}
    assert state.tasks.lease_tasks(C, 1, 3 * AVOID, TIMING)[0] == []  # nobody runs it again


def test_two_colluders_lying_about_a_good_program_are_disproved_and_the_task_goes_on(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """Every inner step runs, in parts, within half the limit: the claims were lies. The task is
    pending for other nodes, no attempt spent; each liar keeps its refusal; nobody paid."""
    run = Parts(5, lambda s: 200 * MiB)
    v = grid(state, blobs, tmp_path, run)
    claimed_and_reviewed(state, v, clock)
    assert [(start, most) for start, most, _, _ in run.asked] == [(0, 1), (1, 1), (2, 2), (4, 4)]
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
    assert state.jobs.get_job(JOB).state == JobState.RUNNING
    assert node(state, A) == node(state, B) == (1, 1, 1)  # each keeps its refusal
    assert paid(state) == {}
    [said] = [m for m in events(state, "reissued") if "claims disproved" in m]
    assert "ran every one of its 5 inner steps (4 measured parts)" in said and "within 0.5×" in said, said
    (lease,), _ = state.tasks.lease_tasks(C, 1, 3 * AVOID, TIMING)
    assert lease.task_id == TASK  # an honest node trains it


@pytest.mark.parametrize(
    ("steps", "peak", "part_s", "why"),
    [
        (1000, lambda s: 200 * MiB if s < 900 else 900 * MiB, 5.0, "over its review budget"),  # grows late
        (3, lambda s: 400 * MiB, 1.0, "too near its memory limit of 512 MiB to tell"),  # between the margins
    ],
    ids=["grows-past-the-budget", "in-between"],
)
def test_a_run_that_cannot_be_cleared_is_undecided_never_disproved_early(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, steps: int, peak: Callable[[int], int],
    part_s: float, why: str,
) -> None:  # fmt: skip
    """A program small in its first steps and large at step 900: parts that stay small until the
    review's budget (4 × its 4 s time limit) is spent say nothing of the steps they did not run;
    a whole run between half and 1.25× the limit is the edge. Undecided: other nodes settle it."""
    run = Parts(steps, peak, part_s)
    v = grid(state, blobs, tmp_path, run)
    claimed_and_reviewed(state, v, clock)
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
    [said] = events(state, "undecided")
    assert why in said, said
    assert node(state, A) == node(state, B) == (1, 1, 1) and paid(state) == {}
    assert state.jobs.get_job(JOB).state == JobState.RUNNING


def test_a_node_offering_less_than_the_limit_met_its_own_cap(state: Store, blobs: BlobStore, tmp_path: Path) -> None:
    """The guard: its report is its own failure, as before (an attempt spent, no review)."""
    run = Parts(5, lambda s: 200 * MiB)
    grid(state, blobs, tmp_path, run)
    with state.engine.begin() as conn:
        conn.execute(schema.nodes.update().where(schema.nodes.c.address == A).values(memory_bytes=LIMIT // 2))
    claim(state, A, AVOID, OOM)
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 1
    assert run.asked == [] and state.jobs.get_job(JOB).task_failures == 1


def test_end_task_leaves_the_job_running(state: Store, blobs: BlobStore, tmp_path: Path) -> None:
    """tasks.end_task: the task alone fails for good; no attempts of it remain to be leased."""
    grid(state, blobs, tmp_path, Parts(5, lambda s: 0))
    with state.engine.begin() as conn:
        row = conn.execute(schema.tasks.select().where(schema.tasks.c.task_id == TASK)).one()
        end_task(conn, row, 2, "gone", 5, A)
    assert state.tasks.get_task(TASK).state == "failed" and state.jobs.get_job(JOB).state == JobState.QUEUED
    assert state.tasks.lease_tasks(C, 1, 10, TIMING)[0] == []


class _Died(BaseException):
    """The coordinator's process killed at that very point (nothing after it runs, no except catches it)."""


@pytest.mark.parametrize("at", ["charge", "advance"])
def test_a_coordinator_dying_as_a_part_is_kept_forgets_no_peak(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    """A part holding 0.8x the limit, then the coordinator killed as the review keeps it: the restarted
    review must not lose that peak (it went on from the part's state with no peak recorded, then
    disproved the claims on the small parts after it, the honest claimants refused)."""
    run = Parts(3, lambda s: 400 * MiB if s == 0 else 200 * MiB)  # the first step between the margins
    v = grid(state, blobs, tmp_path, run)
    assert claim(state, A, AVOID, OOM) is True
    assert claim(state, B, 2 * AVOID, OOM) is True
    keep = getattr(ReviewParts, at)

    def killed(*args: object) -> None:
        raise _Died

    monkeypatch.setattr(ReviewParts, at, killed)  # killed as it keeps the part's cost, or its state
    with pytest.raises(_Died):
        turn(v.reviews)
    monkeypatch.setattr(ReviewParts, at, keep)  # restarted: its files as the kill left them
    while state.tasks.get_task(TASK).state == "contested":
        turn(v.reviews)
    [said] = events(state, "undecided")
    assert "too near its memory limit of 512 MiB to tell" in said and "its run held 400 MiB" in said, said
    assert not any("claims disproved" in m for m in events(state, "reissued"))
    assert node(state, A) == node(state, B) == (1, 1, 1)  # each keeps its refusal, nothing more
