"""A node's run of a task holding more than the task's memory limit (ErrorKind.OUT_OF_MEMORY), on
SQLite and PostgreSQL: from a CPU run of a kind whose memory the referee measures it is a claim
that the submitter's program needs more than its limit (repositories.limit_claims, "Over its memory
limit"), reviewed by the peak of the referee's measured run (services.verification.memory): past
1.25× the limit, confirmed (the job fails naming the memory limit, the claimants paid by a draw);
within half of it, disproved (the claimants keep their refusals); in between, undecided. A report
on a job asking for CUDA and a kind the referee does not measure stay the node's own failure, as
every out-of-memory report was before (a CUDA run's on other jobs: test_cuda_memory_claims.py).

The referee's measured runs are given here (Measured); the real one, a fresh sandboxed child
polled for its VmHWM, and real node daemons: tests/security/test_memory_limits.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from coordinator.db import schema
from coordinator.repositories.ledger import claim_pay
from coordinator.repositories.store import Store
from tensorgrid.blobs import BlobStore
from tensorgrid.crypto import normalize_address
from tensorgrid.sandbox import SandboxFailure, SandboxLimits
from tensorgrid.sandbox.measured import Measured
from tensorgrid.types import ErrorKind, JobState, TaskError
from tests.unit.coordinator import test_review_parts as parts
from tests.unit.coordinator.test_claim_pay import REWARD, paid
from tests.unit.coordinator.test_claims import AVOID, TASK, claim
from tests.unit.coordinator.test_program_errors import A, B, job_of_rows, node, task_failures
from tests.unit.coordinator.test_review_parts import Clock, turn
from tests.unit.coordinator.test_review_rows import ROWS, Rows, reviews
from tests.unit.coordinator.test_storage import CPU, GPU, JOB

state, blobs, clock = parts.state, parts.blobs, parts.clock  # the fixtures: a store on each database

MiB = 2**20
LIMIT = 512 * MiB
OOM = TaskError(ErrorKind.OUT_OF_MEMORY, "the task used 600 MiB, over its memory limit of 512 MiB")


class Measure:
    """The referee's measured run of the task: what it gives, and what it was asked."""

    def __init__(self, measured: Measured) -> None:
        self.measured = measured
        self.asked: list[tuple[int, int]] = []

    def __call__(self, model_sha: str, settings: dict[str, Any], source: Path, stop: int, mark: int) -> Measured:
        assert settings == {"batch_size": 4} and source.exists()  # the task's settings as leased, its input
        self.asked.append((stop, mark))
        return self.measured


def limited(state: Store, blobs: BlobStore, tmp_path: Path, *nodes: Any, device: str = "any") -> None:
    """The job's one task of ROWS rows, a memory limit of LIMIT and a time limit of 4 s."""
    state.tasks.measured = frozenset({parts.KIND})
    job_of_rows(state, blobs, tmp_path, *(nodes or ((A, CPU), (B, CPU))), device=device)
    with state.engine.begin() as conn:
        conn.execute(schema.tasks.update().values(memory_limit_bytes=LIMIT, time_limit_ms=4000))


def reviewed(state: Store, blobs: BlobStore, clock: Clock, measured: Measured, cap: int = 4 << 30) -> Measure:
    """Both claims made; the referee's review run to its verdict (cap: its child's memory cap)."""
    assert claim(state, A, AVOID, OOM) is True
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0  # a claim: no attempt
    assert claim(state, B, 2 * AVOID, OOM) is True
    assert state.tasks.get_task(TASK).state == "contested"
    r = reviews(state, blobs, Rows(clock))
    r.rt.sandbox = SandboxLimits(time_s=10.0, memory_bytes=cap)
    measure = Measure(measured)
    r.add_measure(parts.KIND, measure)
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    assert measure.asked == [(int(1.25 * LIMIT), LIMIT)]  # stopped at 1.25× the limit; timed at the limit
    return measure


def test_a_program_over_its_memory_limit_fails_the_job_and_pays_the_claimants(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: each report was its node's own failure (an attempt, a failure and its backoff),
    unpaid, until the task's attempts were spent."""
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: 0)  # both claimants win their draw
    limited(state, blobs, tmp_path)
    # the referee's run passed the limit 1 s in and was stopped at 1.25× it, 2 s in
    reviewed(state, blobs, clock, Measured(700 * MiB, True, 2.0, None, crossed_s=1.0))
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED, job
    assert job.error.startswith("task 0 failed for good: claims confirmed"), job.error
    assert "out_of_memory: its program needs more than its memory limit of 512 MiB" in job.error, job.error
    assert node(state, A) == node(state, B) == (0, 0, 0)  # unblamed: refusals and failures taken back
    assert paid(state) == {normalize_address(A): REWARD, normalize_address(B): REWARD}
    [said] = [e.message for e in state.jobs.events_after(JOB, 0) if "units of work" in e.message]
    assert f"after 24 of its {ROWS} units" in said, said  # 1 s of the 4 s limit: a quarter of the rows


def test_a_program_comfortably_within_its_limit_refuses_the_claimants(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """A node short of memory, or two colluding liars: the referee's whole run held 200 MiB of 512."""
    limited(state, blobs, tmp_path)
    reviewed(state, blobs, clock, Measured(200 * MiB, False, 1.0, 1.0, answer={"rows": ROWS}))
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
    assert state.jobs.get_job(JOB).state != JobState.FAILED
    assert node(state, A) == node(state, B) == (1, 1, 1)  # each keeps its refusal
    assert paid(state) == {}
    said = [e.message for e in state.jobs.events_after(JOB, 0) if "claims disproved" in e.message]
    assert said and "holding at most 200 MiB, within 0.5× its memory limit of 512 MiB" in said[0], said


@pytest.mark.parametrize(
    "measured",
    [
        Measured(400 * MiB, False, 1.0, 1.0, answer={"rows": ROWS}),  # between half and 1.25× the limit
        Measured(100 * MiB, False, 10.0, 1.0, failure=SandboxFailure("timeout", "over its request")),
        Measured(100 * MiB, False, 1.0, 1.0, failure=SandboxFailure("crashed", "killed by SIGKILL")),
        Measured(0, False, 1.0, 1.0, answer={"rows": ROWS}),  # no /proc: no peak to read
    ],
    ids=["near-the-limit", "timed-out", "crashed", "unreadable"],
)
def test_a_run_that_measures_nothing_clear_is_undecided(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, measured: Measured
) -> None:
    limited(state, blobs, tmp_path)
    reviewed(state, blobs, clock, measured)
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
    assert state.jobs.get_job(JOB).state != JobState.FAILED and paid(state) == {}
    assert any(e.kind == "undecided" for e in state.jobs.events_after(JOB, 0))
    assert node(state, A) == node(state, B) == (1, 1, 1)


@pytest.mark.parametrize("cap_mib, failed", [(4096, True), (600, False)])
def test_running_out_of_the_referees_own_cap_confirms_only_past_the_margin(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, cap_mib: int, failed: bool
) -> None:
    """A MemoryError under the referee's cap: the program's address space grew past it. Under a cap
    of 4 GiB that is past 1.25× the limit (a node's backstop stops it at 1×): confirmed; under 600 MiB,
    less than 1.25× the limit, it says nothing of the task."""
    limited(state, blobs, tmp_path)
    failure = SandboxFailure("out_of_memory", "MemoryError: cannot allocate")
    reviewed(state, blobs, clock, Measured(300 * MiB, False, 1.0, 1.0, failure=failure), cap=cap_mib * MiB)
    job = state.jobs.get_job(JOB)
    assert (job.state == JobState.FAILED) is failed, job
    if failed:
        assert "ran out of the referee's memory cap of 4096 MiB" in job.error, job.error


def test_out_of_memory_on_a_job_asking_for_cuda_stays_the_nodes_own_failure(
    state: Store, blobs: BlobStore, tmp_path: Path
) -> None:
    """Its limit is sized for a GPU, which a CPU run cannot judge (an "any" job's CUDA report is a
    claim: tests/unit/coordinator/test_cuda_memory_claims.py)."""
    limited(state, blobs, tmp_path, (A, GPU), device="cuda")
    assert claim(state, A, AVOID, OOM) is True
    assert task_failures(state) == 1 and node(state, A) == (1, 0, 1)  # an attempt, a failure, no refusal


def test_out_of_memory_on_a_kind_the_referee_does_not_measure_is_the_nodes_own(
    state: Store, blobs: BlobStore, tmp_path: Path
) -> None:
    limited(state, blobs, tmp_path)
    state.tasks.measured = frozenset()
    assert claim(state, A, AVOID, OOM) is True
    assert task_failures(state) == 1 and node(state, A) == (1, 0, 1)


def test_out_of_memory_on_a_node_offering_less_than_the_limit_is_the_nodes_own(
    state: Store, blobs: BlobStore, tmp_path: Path
) -> None:
    """It met its own cap (256 MiB), not the task's limit (512 MiB)."""
    limited(state, blobs, tmp_path, (A, replace(CPU, memory_bytes=256 * MiB)))
    assert claim(state, A, AVOID, OOM) is True
    assert task_failures(state) == 1 and node(state, A) == (1, 0, 1)


def test_one_lying_node_claiming_again_is_refused_by_the_referee(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """A lone liar's second claim sends the task to review; the measured run refuses it."""
    limited(state, blobs, tmp_path, (A, CPU))
    assert claim(state, A, AVOID, OOM) is True
    assert claim(state, A, 2 * AVOID, OOM) is True
    assert state.tasks.get_task(TASK).state == "contested"
    r = reviews(state, blobs, Rows(clock))
    r.add_measure(parts.KIND, Measure(Measured(100 * MiB, False, 1.0, 1.0, answer={"rows": ROWS})))
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    assert state.tasks.get_task(TASK).state == "pending" and node(state, A) == (1, 1, 1)
    assert paid(state) == {} and state.jobs.get_job(JOB).state != JobState.FAILED
