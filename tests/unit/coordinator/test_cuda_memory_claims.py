"""Out-of-memory reports from CUDA runs, on SQLite and PostgreSQL (repositories.limit_claims, "Over its
memory limit"; repositories.claim_devices): on a job whose tasks may run on any device a CUDA node's
OUT_OF_MEMORY is a claim, which the referee's measured CPU run can confirm but not disprove. The task's
limit is the grid's reference (CPU) one there (CPU nodes run it, intake holds it to the CPU), so a
referee run past 1.25× it shows the program over its limit by the job's own definition: the job fails
naming the limit and every claimant, CPU or CUDA, is paid by its draw. A clean or in-between run is
undecided for a CUDA claimant (a CUDA node compares its worker's host RSS, CUDA runtime included, with
the limit, and its GPU fills at the slot's fraction: it may fail where a CPU node passes), settled by
other nodes as any undecided claim (a training task's measured parts alike). On a job asking for
CUDA (a limit sized for a GPU) the report stays the node's own failure.

On main every CUDA out-of-memory report was the node's own failure (an attempt, a failure, never
reviewed, never paid), so a program over its limit on every device had honest CUDA nodes run it for
nothing until its attempts were spent. The referee's measured runs are given here (Measured); the real
one: tests/security/test_cuda_memory_claims.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.db import schema as s
from coordinator.repositories import claims
from coordinator.repositories.ledger import claim_pay
from coordinator.repositories.store import Store
from tensorgrid.blobs import BlobStore
from tensorgrid.crypto import normalize_address
from tensorgrid.sandbox import SandboxLimits
from tensorgrid.sandbox.measured import Measured
from tensorgrid.types import JobState
from tests.unit.coordinator import test_memory_claims_training as training
from tests.unit.coordinator import test_review_parts as parts
from tests.unit.coordinator.test_claim_pay import REWARD, paid
from tests.unit.coordinator.test_claims import AVOID, TASK, claim
from tests.unit.coordinator.test_cuda_claims import G1, G2, G3, G4, LATER, NODES, P1, P2, events, leases, verdicts
from tests.unit.coordinator.test_memory_claims import LIMIT, OOM, Measure, limited
from tests.unit.coordinator.test_program_errors import node, task_failures
from tests.unit.coordinator.test_review_parts import Clock, turn
from tests.unit.coordinator.test_review_rows import ROWS, Rows, reviews
from tests.unit.coordinator.test_storage import JOB

state, blobs, clock = parts.state, parts.blobs, parts.clock  # the fixtures: a store on each database

MiB = 2**20
OVER = Measured(700 * MiB, True, 2.0, None, crossed_s=1.0)  # passed the limit 1 s in, stopped at 1.25× it
CLEAN = Measured(200 * MiB, False, 1.0, 1.0, answer={"rows": ROWS})  # the whole run within half the limit
NEAR = Measured(400 * MiB, False, 1.0, 1.0, answer={"rows": ROWS})  # between half and 1.25× the limit


def review(state: Store, blobs: BlobStore, clock: Clock, measured: Measured) -> Measure:
    """The referee's measured review of the contested task, run to its verdict."""
    assert state.tasks.get_task(TASK).state == "contested"
    r = reviews(state, blobs, Rows(clock))
    r.rt.sandbox = SandboxLimits(time_s=10.0, memory_bytes=4 << 30)
    measure = Measure(measured)
    r.add_measure(parts.KIND, measure)
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    assert measure.asked == [(int(1.25 * LIMIT), LIMIT)]  # a measured run, stopped at 1.25× the limit
    return measure


def two_cuda_claims(state: Store, blobs: BlobStore, tmp_path: Path) -> None:
    limited(state, blobs, tmp_path, *NODES)
    assert claim(state, G1, AVOID, OOM) is True
    assert task_failures(state) == 0 and node(state, G1) == (1, 1, 1)  # a claim's refusal, no attempt
    assert claim(state, G2, 2 * AVOID, OOM) is True


@pytest.mark.parametrize("device", ["any", "cuda"])
def test_a_cuda_out_of_memory_is_a_claim_unless_its_job_asks_for_cuda(
    state: Store, blobs: BlobStore, tmp_path: Path, device: str
) -> None:
    """Before: the node's own failure on both. A CUDA job sizes its limit for a GPU, which no CPU run
    can judge: there it stays so."""
    limited(state, blobs, tmp_path, *NODES, device=device)
    assert claim(state, G1, AVOID, OOM) is True
    if device == "any":
        assert task_failures(state) == 0 and node(state, G1) == (1, 1, 1)  # a claim's refusal
        assert claim(state, G2, 2 * AVOID, OOM) is True
        assert state.tasks.get_task(TASK).state == "contested"
    else:
        assert task_failures(state) == 1 and node(state, G1) == (1, 0, 1)  # an attempt, a failure, no refusal
        assert state.reviews.contested() == []


def test_a_program_over_its_limit_on_the_referee_fails_the_job_and_pays_the_cuda_claimants(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past 1.25× the limit on the reference CPU a CPU node fails it too: over its limit by the job's
    own definition, whatever the CUDA nodes met."""
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: 0)  # both claimants win their draw
    two_cuda_claims(state, blobs, tmp_path)
    review(state, blobs, clock, OVER)
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and job.error.startswith("task 0 failed for good: claims confirmed"), job
    assert "out_of_memory: its program needs more than its memory limit of 512 MiB" in job.error, job.error
    assert verdicts(state) == {G1: claims.FAILED, G2: claims.FAILED}
    assert node(state, G1) == node(state, G2) == (0, 0, 0)  # unblamed: refusals taken back
    assert paid(state) == {normalize_address(G1): REWARD, normalize_address(G2): REWARD}
    [said] = [e.message for e in state.jobs.events_after(JOB, 0) if "units of work" in e.message]
    assert f"after 24 of its {ROWS} units" in said, said  # the reference's 1 s of the 4 s limit


def test_two_cuda_liars_on_a_small_program_are_undecided_unpaid_and_fail_nothing(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """One attempt, so a believed claim would fail the job. A clean CPU run does not disprove a CUDA
    node's report (its GPU may be full, its host RSS holds the CUDA runtime), but proves nothing
    against the submitter: undecided, not paid, and a node that never claimed finishes the task."""
    two_cuda_claims(state, blobs, tmp_path)
    with state.engine.begin() as conn:
        conn.execute(s.tasks.update().values(max_attempts=1))
    review(state, blobs, clock, CLEAN)
    assert verdicts(state) == {G1: claims.OTHER_DEVICE, G2: claims.OTHER_DEVICE}
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
    assert state.jobs.get_job(JOB).state == JobState.RUNNING
    [said] = events(state, claims.UNDECIDED)
    assert "claims undecided for 2 claimants that ran it on another device class than the referee's (cpu)" in said
    assert "out-of-memory" in said, said
    assert node(state, G1) == node(state, G2) == (1, 1, 1) and paid(state) == {}
    assert leases(state, G1, LATER) == leases(state, G2, LATER) == []  # never to a claimant again
    assert state.reviews.contested() == []  # one review per task
    assert leases(state, P1, LATER) == [TASK]  # a node that never claimed runs it


def test_an_in_between_run_is_undecided_for_cuda_claimants(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    two_cuda_claims(state, blobs, tmp_path)
    review(state, blobs, clock, NEAR)
    assert verdicts(state) == {G1: claims.UNDECIDED, G2: claims.UNDECIDED}
    assert state.jobs.get_job(JOB).state == JobState.RUNNING and task_failures(state) == 0
    assert node(state, G1) == node(state, G2) == (1, 1, 1) and paid(state) == {}


def test_a_cpu_and_a_cuda_claimant_are_judged_each_by_its_device_and_later_claims_by_the_quorum(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """The clean run disproves the CPU claim and leaves the CUDA one undecided; a later CPU claim is
    disproved at once; QUORUM (2) more CUDA identities confirm the CUDA claims, unpaid (no run
    proves them): the 2 + QUORUM identities claim_devices already requires."""
    limited(state, blobs, tmp_path, *NODES)
    claim(state, P1, AVOID, OOM)
    claim(state, G1, 2 * AVOID, OOM)
    review(state, blobs, clock, CLEAN)
    assert verdicts(state) == {P1: claims.CLEAN, G1: claims.OTHER_DEVICE}
    assert leases(state, P1, LATER) == leases(state, G1, LATER) == []
    assert claim(state, P2, LATER, OOM) is True  # a CPU run: disproved at once, counts for nothing
    assert verdicts(state)[P2] == claims.CLEAN and node(state, P2) == (1, 1, 1)
    assert claim(state, G3, 2 * LATER, OOM) is True  # one of the QUORUM
    assert task_failures(state) == 0 and state.jobs.get_job(JOB).state == JobState.RUNNING
    assert claim(state, G4, 3 * LATER, OOM) is False
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "confirmed by 2 more nodes" in job.error, job.error
    assert node(state, P1)[1] == node(state, P2)[1] == 1 and paid(state) == {}


@pytest.mark.parametrize("over", [True, False], ids=["over-at-step-3", "every-step-small"])
def test_a_training_tasks_cuda_claimants_are_confirmed_by_its_measured_parts_never_disproved(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, over: bool
) -> None:
    """A training task's review in measured parts (memory_parts): past 1.25× the limit the task ends
    alone, its CUDA claimants unblamed and drawn; every step within half of it leaves them undecided."""
    run = training.Parts(10, lambda step: 900 * MiB if over and step >= 3 else 200 * MiB)
    v = training.grid(state, blobs, tmp_path, run)
    with state.engine.begin() as conn:  # A and B declare CUDA
        conn.execute(s.nodes.update().where(s.nodes.c.address.in_((training.A, training.B))).values(device_kind="cuda"))
    training.claimed_and_reviewed(state, v, clock)
    if over:
        assert state.tasks.get_task(TASK).state == "failed"  # ended alone, its job going on
        assert verdicts(state) == {training.A: claims.FAILED, training.B: claims.FAILED}
        assert node(state, training.A) == node(state, training.B) == (0, 0, 0)
        [drawn] = training.events(state, claim_pay.EVENT)
        assert "after 2 of its 10 units of work" in drawn, drawn
    else:
        assert verdicts(state) == {training.A: claims.OTHER_DEVICE, training.B: claims.OTHER_DEVICE}
        assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
        assert node(state, training.A) == node(state, training.B) == (1, 1, 1)
    assert state.jobs.get_job(JOB).state == JobState.RUNNING
