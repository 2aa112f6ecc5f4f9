"""A node's run of a task hitting the task's time limit (ErrorKind.TIMEOUT), on SQLite and
PostgreSQL: from a CPU run of a kind the referee reviews it is a claim that the submitter's program
is too slow for its limit (repositories.limit_claims, "Over its time limit"), reviewed by measuring the
referee's run against that limit: past 1.25× it, confirmed (the job fails naming the limit, the
claimants paid by a draw for what the limit's time reaches); a whole run within half of it,
disproved (the claimants keep their refusals); in between, undecided (other nodes settle it). A
CUDA run's timeout is a claim too, confirmed as a CPU run's, never disproved (test_cuda_claims.py);
a lease that expired and a kind the referee does not review stay the node's own failure, as every
timeout was before.

The referee's runs are in process here, each row taking a clock's time (ROW_S); the real referee
and node daemons: tests/security/test_time_limits.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.db import schema
from coordinator.repositories.ledger import claim_pay
from coordinator.repositories.store import Store
from tensorgrid.blobs import BlobStore
from tensorgrid.crypto import normalize_address
from tensorgrid.types import ErrorKind, JobState, TaskError
from tests.unit.coordinator import test_review_parts as parts
from tests.unit.coordinator.test_claim_pay import REWARD, paid
from tests.unit.coordinator.test_claims import AVOID, TASK, claim
from tests.unit.coordinator.test_program_errors import A, B, job_of_rows, node, task_failures
from tests.unit.coordinator.test_review_parts import Clock, turn
from tests.unit.coordinator.test_review_rows import ROWS, Rows, reviews
from tests.unit.coordinator.test_storage import CPU, JOB, TIMING

state, blobs, clock = parts.state, parts.blobs, parts.clock  # the fixtures: a store on each database

C = "0x" + "cc" * 20
ROW_S = 0.1  # the referee's time a row: the whole task (ROWS rows) takes 9.6 s of its clock
SLOW = TaskError(ErrorKind.TIMEOUT, "the task exceeded its time limit of 4s")


def limited(
    state: Store, blobs: BlobStore, tmp_path: Path, limit_s: float, *nodes: object, device: str = "any"
) -> None:
    """The job's one task of ROWS rows with a time limit of limit_s, on CPU nodes A, B and C."""
    job_of_rows(state, blobs, tmp_path, *(nodes or ((A, CPU), (B, CPU), (C, CPU))), device=device)  # type: ignore[arg-type]
    with state.engine.begin() as conn:
        conn.execute(schema.tasks.update().values(time_limit_ms=int(limit_s * 1000)))


def reviewed(state: Store, blobs: BlobStore, clock: Clock, row_s: float = ROW_S, budget_factor: float = 4.0) -> Rows:
    """Both claims made; the referee's review run to its verdict."""
    assert claim(state, A, AVOID, SLOW) is True
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0  # a claim: no attempt
    assert claim(state, B, 2 * AVOID, SLOW) is True
    assert state.tasks.get_task(TASK).state == "contested"
    run = Rows(clock, row_s=row_s)
    r = reviews(state, blobs, run)
    r.budget_factor = budget_factor
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    return run


def test_a_program_too_slow_for_its_limit_fails_the_job_and_pays_the_claimants(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: each timeout was its node's own failure (an attempt, a failure and its backoff),
    unpaid, until the task's attempts were spent."""
    drawn: list[int] = []

    def randbelow(n: int) -> int:  # both claimants win their draw
        drawn.append(n)
        return 0

    monkeypatch.setattr(claim_pay.secrets, "randbelow", randbelow)
    limited(state, blobs, tmp_path, 4.0)
    reviewed(state, blobs, clock)  # 9.6 s on the referee: over 1.25 × 4 s
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED, job
    assert job.error.startswith("task 0 failed for good: claims confirmed"), job.error
    assert "timeout: its program needs more than its time limit of 4s" in job.error, job.error
    assert node(state, A) == node(state, B) == (0, 0, 0)  # unblamed: refusals and failures taken back
    assert paid(state) == {normalize_address(A): REWARD, normalize_address(B): REWARD}
    [said] = [e.message for e in state.jobs.events_after(JOB, 0) if "units of work" in e.message]
    assert f"after 40 of its {ROWS} units" in said, said  # 4 s of 9.6 s at the referee's pace: 40 rows
    assert drawn == [ROWS, ROWS]


def test_a_slow_program_is_confirmed_once_its_parts_pass_the_limit_not_after_its_whole_run(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """A program 8× too slow costs the referee about 1.25× its limit, not the whole run."""
    limited(state, blobs, tmp_path, 24.0)  # over a part's share of a request: run in parts
    run = reviewed(state, blobs, clock, row_s=2.0)  # 192 s on the referee
    assert state.jobs.get_job(JOB).state == JobState.FAILED
    assert sum(len(r) for r in run.runs) < ROWS // 4 and clock.now < 4 * 24.0  # within the review's budget


def test_a_program_comfortably_within_its_limit_refuses_the_claimants(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """A slow node, or two colluding liars: the referee's clean run in 9.6 s of a 30 s limit."""
    limited(state, blobs, tmp_path, 30.0)
    reviewed(state, blobs, clock)
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
    assert state.jobs.get_job(JOB).state != JobState.FAILED
    assert node(state, A) == node(state, B) == (1, 1, 1)  # each keeps its refusal
    assert paid(state) == {}
    said = [e.message for e in state.jobs.events_after(JOB, 0) if "claims disproved" in e.message]
    assert said and "within 0.5× its time limit of 30s" in said[0], said
    # claiming it again is the node's own failure: an attempt spent, never another review
    assert claim(state, A, 3 * AVOID, SLOW) is True
    assert task_failures(state) == 1 and node(state, A) == (2, 1, 2) and state.tasks.get_task(TASK).state == "pending"


def test_a_program_near_its_limit_is_undecided_and_settled_by_other_nodes(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """9.6 s of a 10 s limit: the referee cannot tell a submitter at the edge from slow nodes."""
    limited(state, blobs, tmp_path, 10.0)
    reviewed(state, blobs, clock)
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
    assert state.jobs.get_job(JOB).state != JobState.FAILED
    assert any(e.kind == "undecided" for e in state.jobs.events_after(JOB, 0))
    assert state.tasks.lease_tasks(A, 1, 3 * AVOID, TIMING)[0] == []  # never leased again to a claimant
    assert claim(state, C, 3 * AVOID, SLOW) is True  # a third node: one of the QUORUM (2) more
    assert paid(state) == {}  # no proof: nobody is paid


def test_an_expired_lease_is_no_claim(state: Store, blobs: BlobStore, tmp_path: Path) -> None:
    """The coordinator's own timeout (a silent node): the node's failure, as before."""
    limited(state, blobs, tmp_path, 4.0)
    (lease,), _ = state.tasks.lease_tasks(A, 1, AVOID, TIMING)
    assert state.tasks.reap_expired(AVOID + 10**9) == 1
    assert task_failures(state) == 1 and node(state, A)[1] == 0  # spent, no refusal: not a claim


def test_a_timeout_of_a_kind_the_referee_does_not_review_is_the_nodes_own(
    state: Store, blobs: BlobStore, tmp_path: Path
) -> None:
    state.tasks.reviewed = frozenset()
    limited(state, blobs, tmp_path, 4.0)
    assert claim(state, A, AVOID, SLOW) is True
    assert task_failures(state) == 1 and node(state, A) == (1, 0, 1)


def test_one_lying_node_claiming_again_is_refused_by_the_referee(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """A lone liar's second claim sends the task to review; the clean run refuses it."""
    limited(state, blobs, tmp_path, 30.0, (A, CPU))
    assert claim(state, A, AVOID, SLOW) is True
    assert claim(state, A, 2 * AVOID, SLOW) is True
    assert state.tasks.get_task(TASK).state == "contested"
    r = reviews(state, blobs, Rows(clock, row_s=ROW_S))
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    assert state.tasks.get_task(TASK).state == "pending" and node(state, A) == (1, 1, 1)
    assert paid(state) == {} and state.jobs.get_job(JOB).state != JobState.FAILED


def test_one_batch_longer_than_a_request_longer_than_the_limit_is_confirmed_not_undecided(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """A batch of 4 rows takes 12 s, over the referee's 10 s request, itself over 1.25 × 6 s: the
    task exceeds its limit whatever the rest does (an invalid-input claim would be undecided). The
    budget is raised: the parts that find the batch too long (80, 20, 4, 4 rows) cost 40 s."""
    limited(state, blobs, tmp_path, 6.0)
    reviewed(state, blobs, clock, row_s=3.0, budget_factor=10.0)
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "needs more than its time limit of 6s" in job.error, job


class Referee:
    """The referee's child as Reviews._bounds reads it: the CPU time of its last run, here
    `cpu_per_s` of each second of the run's wall time (1/5: a niced child on a busy machine that
    got a fifth of a core; 2.0: two threads busy the whole run), and the threads it may use."""

    def __init__(self, clock: Clock, cpu_per_s: float, threads: int) -> None:
        self.clock, self.cpu_per_s, self.threads = clock, cpu_per_s, threads
        self.before = clock.now

    def last_cpu_s(self) -> float:
        took, self.before = self.clock.now - self.before, self.clock.now
        return took * self.cpu_per_s


def reviewed_on(state: Store, blobs: BlobStore, clock: Clock, cpu_per_s: float, threads: int) -> None:
    assert claim(state, A, AVOID, SLOW) is True and claim(state, B, 2 * AVOID, SLOW) is True
    r = reviews(state, blobs, Rows(clock, row_s=ROW_S))
    r.rt.referee = Referee(clock, cpu_per_s, threads)  # type: ignore[attr-defined]
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)


def test_a_busy_machine_stretching_the_referees_run_confirms_nothing(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """The run takes 9.6 s of wall time, over 1.25 × a 4 s limit, but its child had a fifth of a
    core (the referee runs niced: load on the coordinator's machine, which a colluder can add,
    stretches it): 1.9 s of CPU, which one thread does within half the limit. Judged on wall time
    the colluders' claims were confirmed and the job failed; its CPU time disproves them."""
    limited(state, blobs, tmp_path, 4.0)
    reviewed_on(state, blobs, clock, cpu_per_s=0.2, threads=2)
    assert state.jobs.get_job(JOB).state != JobState.FAILED and paid(state) == {}
    assert node(state, A) == node(state, B) == (1, 1, 1)  # each keeps its refusal
    said = [e.message for e in state.jobs.events_after(JOB, 0) if "claims disproved" in e.message]
    assert said and "in at most 1.9s, within 0.5×" in said[0], said


def test_a_run_busy_on_all_its_threads_confirms_on_its_lower_bound(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """19.2 s of CPU on 2 threads: at least 9.6 s of the referee's time, over 1.25 × 4 s."""
    limited(state, blobs, tmp_path, 4.0)
    reviewed_on(state, blobs, clock, cpu_per_s=2.0, threads=2)
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "took at least 9.6s of it" in job.error, job.error


def test_a_run_that_could_have_been_parallel_or_not_is_undecided(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """9.6 s of CPU on a child that may use 4 threads: between 2.4 s (4 at once) and 9.6 s (one):
    neither bound decides against a 4 s limit, so other nodes settle it."""
    limited(state, blobs, tmp_path, 4.0)
    reviewed_on(state, blobs, clock, cpu_per_s=1.0, threads=4)
    assert state.jobs.get_job(JOB).state != JobState.FAILED
    assert any(e.kind == "undecided" for e in state.jobs.events_after(JOB, 0))
