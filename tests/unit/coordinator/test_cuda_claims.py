"""Claims from CUDA runs, on SQLite and PostgreSQL (repositories.claim_devices): a CUDA node's
program error or timeout is a claim, which the referee's CPU run can confirm but not disprove. Its
run raising (or taking 1.25× the time limit) confirms it as a CPU claim: the job fails at the
verdict and every claimant, CPU or CUDA, is paid by its draw. Its clean run is undecided for a CUDA
claimant, per claimant: on the same task a CPU claimant is disproved and a CUDA one left for other
nodes to settle (never leased to a claimant again, QUORUM further CUDA claims confirm, unpaid; a
CPU node's later claim is disproved at once and counts for nothing). A CUDA out-of-memory report is
judged so too, unless its job asks for CUDA (tests/unit/coordinator/test_cuda_memory_claims.py).

On main a CUDA run's program error and timeout were the node's own execution error: an attempt
spent, a failure, never reviewed, never paid, so a program raising late (or only on CUDA) had
honest CUDA nodes run it for nothing. Nodes are registered with device_kind "cuda" here (no GPU is
needed: it is the node's word); the referee's runs are in process (tests/security/test_cuda_claims.py
runs the real coordinator and its sandboxed referee against CUDA-declared nodes)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from coordinator.db import schema as s
from coordinator.repositories import claims
from coordinator.repositories.ledger import claim_pay
from coordinator.repositories.store import Store
from coordinator.services.acceptance import ResultAcceptance
from tensorgrid.blobs import BlobStore
from tensorgrid.crypto import normalize_address
from tensorgrid.types import BlobRef, ErrorKind, JobState, TaskError
from tests.unit.coordinator import test_review_parts as parts
from tests.unit.coordinator.test_claim_pay import REWARD, paid
from tests.unit.coordinator.test_claims import AVOID, TASK, claim
from tests.unit.coordinator.test_program_errors import RAISED, job_of_rows, node, task_failures
from tests.unit.coordinator.test_review_parts import Clock, turn
from tests.unit.coordinator.test_review_rows import ROWS, Rows, reviews
from tests.unit.coordinator.test_storage import CPU, GPU, JOB, TIMING, receipt

state, blobs, clock = parts.state, parts.blobs, parts.clock  # the fixtures: a store on each database

# CUDA nodes G1..G4, CPU nodes P1, P2
G1, G2, G3, G4 = ("0x" + f"{c}" * 40 for c in "1234")
P1, P2 = "0x" + "aa" * 20, "0x" + "bb" * 20
NODES = ((G1, GPU), (G2, GPU), (G3, GPU), (G4, GPU), (P1, CPU), (P2, CPU))
SLOW = TaskError(ErrorKind.TIMEOUT, "the task exceeded its time limit of 4s")
LATER = 10 * AVOID


def review(state: Store, blobs: BlobStore, run: Rows) -> None:
    """The referee reviews the contested task to its verdict."""
    assert state.tasks.get_task(TASK).state == "contested"
    r = reviews(state, blobs, run)
    r.budget_factor = 100.0
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)


def verdicts(state: Store) -> dict[str, str | None]:
    c = s.failure_claims.c
    with state.engine.connect() as conn:
        return {r.node: r.verdict for r in conn.execute(select(c.node, c.verdict).where(c.task_id == TASK))}


def leases(state: Store, address: str, t: int) -> list[str]:
    return [lease.task_id for lease in state.tasks.lease_tasks(address, 1, t, TIMING)[0]]


def events(state: Store, kind: str) -> list[str]:
    return [e.message for e in state.jobs.events_after(JOB, 0) if e.kind == kind]


@pytest.mark.parametrize("device", ["any", "cuda"])
def test_a_cuda_runs_program_error_is_a_claim_and_a_second_sends_it_to_review(
    state: Store, blobs: BlobStore, tmp_path: Path, device: str
) -> None:
    """Before: an execution error, the node's own failure (an attempt spent, never reviewed)."""
    job_of_rows(state, blobs, tmp_path, *NODES, device=device)
    assert claim(state, G1, AVOID, RAISED) is True
    assert task_failures(state) == 0 and node(state, G1) == (1, 1, 1)  # a claim's refusal, no attempt
    assert claim(state, G2, 2 * AVOID, RAISED) is True
    assert state.tasks.get_task(TASK).state == "contested"
    [said] = events(state, "contested")
    assert said.startswith("program_error claimed by a second node"), said


def test_a_program_raising_late_on_every_device_fails_the_job_and_pays_the_cuda_claimants(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: 0)  # every claimant wins its draw
    job_of_rows(state, blobs, tmp_path, *NODES)
    claim(state, G1, AVOID, RAISED)
    claim(state, P1, 2 * AVOID, RAISED)  # one CUDA claimant, one CPU claimant
    review(state, blobs, Rows(clock, fail_at=ROWS - 1))  # the referee's CPU run raises on the last batch
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and job.error.startswith("task 0 failed for good: claims confirmed")
    assert paid(state) == {normalize_address(G1): REWARD, normalize_address(P1): REWARD}
    assert node(state, G1) == node(state, P1) == (0, 0, 0)  # unblamed: refusals taken back


def test_a_clean_cpu_run_leaves_two_cuda_claimants_undecided_and_other_nodes_settle_it(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """Two colluding CUDA liars (or two honest nodes whose GPU fails on a program that raises only
    there): one attempt, so a believed claim would fail the job. They cannot fail it, are not paid,
    are not refused again, and a CPU node that never claimed finishes it."""
    job_of_rows(state, blobs, tmp_path, *NODES)
    with state.engine.begin() as conn:
        conn.execute(s.tasks.update().values(max_attempts=1))
    claim(state, G1, AVOID, RAISED)
    claim(state, G2, 2 * AVOID, RAISED)
    review(state, blobs, Rows(clock))  # every row runs cleanly on the referee's CPU
    assert verdicts(state) == {G1: claims.OTHER_DEVICE, G2: claims.OTHER_DEVICE}
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
    assert state.jobs.get_job(JOB).state == JobState.RUNNING
    [said] = events(state, claims.UNDECIDED)
    assert "claims undecided for 2 claimants that ran it on another device class than the referee's (cpu):" in said
    assert node(state, G1) == node(state, G2) == (1, 1, 1)  # the refusal each claim held: nothing more
    assert paid(state) == {}
    assert leases(state, G1, LATER) == leases(state, G2, LATER) == []  # never to a claimant again
    assert state.reviews.contested() == []  # one review per task
    (lease,), _ = state.tasks.lease_tasks(P1, 1, LATER, TIMING)  # a CPU node that never claimed
    signed = replace(receipt(lease.task_id, lease.attempt), input_hash=lease.input.sha256)
    ResultAcceptance(state.engine).accept_result(P1, signed, BlobRef("ff" * 32, 1), None, LATER + 1)
    assert state.jobs.get_job(JOB).tasks_done == 1
    [disproved] = events(state, claims.DISPROVED)
    assert disproved.startswith("2 claimants' claims disproved by a non-claimant's result"), disproved
    assert node(state, G1) == node(state, G2) == (1, 1, 1)


def test_a_cpu_and_a_cuda_claimant_on_one_task_are_judged_each_by_its_device(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """The clean run disproves the CPU claim and leaves the CUDA one undecided; a later CPU claim
    is disproved at once and counts for nothing; QUORUM (2) later CUDA claims confirm the CUDA
    claims (unpaid: no run proves them), never the disproved ones."""
    job_of_rows(state, blobs, tmp_path, *NODES)
    claim(state, P1, AVOID, RAISED)
    claim(state, G1, 2 * AVOID, RAISED)
    review(state, blobs, Rows(clock))
    assert verdicts(state) == {P1: claims.CLEAN, G1: claims.OTHER_DEVICE}
    [said] = events(state, claims.UNDECIDED)
    assert "claims undecided for 1 claimant that ran it on another device class" in said, said
    assert "(cpu), disproved for the 1 other: the referee ran the task cleanly" in said, said
    assert leases(state, P1, LATER) == leases(state, G1, LATER) == []
    assert claim(state, P2, LATER, RAISED) is True  # a CPU run: the clean run disproves it at once
    assert verdicts(state)[P2] == claims.CLEAN and node(state, P2) == (1, 1, 1)
    assert claim(state, G2, 2 * LATER, RAISED) is True  # one of the QUORUM (P2 was none)
    assert task_failures(state) == 0 and node(state, G2) == (1, 1, 1)
    assert claim(state, G3, 3 * LATER, RAISED) is False  # the quorum: G1, G2, G3 believed, 3 attempts spent
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "confirmed by 2 more nodes" in job.error, job.error
    assert [node(state, n)[1] for n in (G1, G2, G3)] == [0, 0, 0]  # believed: refusals taken back
    assert node(state, P1)[1] == node(state, P2)[1] == 1  # disproved: refusals kept
    assert paid(state) == {}


def test_after_a_clean_review_of_cpu_claims_a_cuda_claim_is_undecided_not_the_nodes_failure(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """A program that raises only on CUDA: two CPU liars were disproved, then an honest CUDA node
    meets the raise. Its claim spends nothing and bars it; it is never reviewed again."""
    job_of_rows(state, blobs, tmp_path, *NODES)
    claim(state, P1, AVOID, RAISED)
    claim(state, P2, 2 * AVOID, RAISED)
    review(state, blobs, Rows(clock))
    assert verdicts(state) == {P1: claims.CLEAN, P2: claims.CLEAN} and events(state, claims.UNDECIDED) == []
    assert claim(state, G1, LATER, RAISED) is True
    assert task_failures(state) == 0 and node(state, G1) == (1, 1, 1)  # a claim's refusal, no attempt
    assert leases(state, G1, 2 * LATER) == [] and state.reviews.contested() == []
    assert leases(state, G2, 2 * LATER) == [TASK]


def test_a_cuda_timeout_is_confirmed_when_the_referee_takes_over_the_limit(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit is the reference CPU's: 9.6 s on the referee, over 1.25 × 4 s."""
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: 0)
    job_of_rows(state, blobs, tmp_path, *NODES)
    with state.engine.begin() as conn:
        conn.execute(s.tasks.update().values(time_limit_ms=4000))
    claim(state, G1, AVOID, SLOW)
    claim(state, G2, 2 * AVOID, SLOW)
    review(state, blobs, Rows(clock))
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "its program needs more than its time limit of 4s" in job.error
    assert paid(state) == {normalize_address(G1): REWARD, normalize_address(G2): REWARD}
    assert node(state, G1) == node(state, G2) == (0, 0, 0)


def test_a_cuda_timeout_on_a_program_the_referee_runs_well_within_is_undecided_not_disproved(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """9.6 s of a 30 s limit on the referee's CPU: a CPU claimant is disproved, a CUDA one is not
    (a program may be slow on a GPU alone); neither is paid."""
    job_of_rows(state, blobs, tmp_path, *NODES)
    with state.engine.begin() as conn:
        conn.execute(s.tasks.update().values(time_limit_ms=30_000))
    claim(state, P1, AVOID, SLOW)
    claim(state, G1, 2 * AVOID, SLOW)
    review(state, blobs, Rows(clock))
    assert verdicts(state) == {P1: claims.CLEAN, G1: claims.OTHER_DEVICE}
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
    assert node(state, P1) == node(state, G1) == (1, 1, 1) and paid(state) == {}


def test_a_cuda_node_running_a_cpu_task_is_judged_as_a_cpu_run(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """A task that asks for CPU runs on CPU on every node: the clean run disproves both claims."""
    job_of_rows(state, blobs, tmp_path, *NODES, device="cpu")
    claim(state, G1, AVOID, RAISED)
    claim(state, G2, 2 * AVOID, RAISED)
    review(state, blobs, Rows(clock))
    assert verdicts(state) == {G1: claims.CLEAN, G2: claims.CLEAN}
    assert events(state, claims.UNDECIDED) == [] and state.tasks.get_task(TASK).state == "pending"


def test_a_cuda_invalid_input_claim_is_disproved_by_a_clean_cpu_run(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """The input's files and settings read the same on every device."""
    bad = TaskError(ErrorKind.INVALID_INPUT, "input tensor 'x' has 3 dims (a lie)")
    job_of_rows(state, blobs, tmp_path, *NODES)
    claim(state, G1, AVOID, bad)
    claim(state, G2, 2 * AVOID, RAISED)
    review(state, blobs, Rows(clock))
    assert verdicts(state) == {G1: claims.CLEAN, G2: claims.OTHER_DEVICE}


def test_on_a_job_asking_for_cuda_the_referees_raise_is_undecided_and_pays_nobody(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its program need not run on CPU (intake admits a CUDA program its CPU probe could not run):
    two colluders claiming a program error cannot fail it through a raise that may be the CPU's own,
    nor be paid. (Before this branch: CUDA nodes' invalid-input claims did exactly that.)"""
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: 0)
    job_of_rows(state, blobs, tmp_path, *NODES, device="cuda")
    claim(state, G1, AVOID, RAISED)
    claim(state, G2, 2 * AVOID, RAISED)
    review(state, blobs, Rows(clock, fail_at=0))  # raises on the referee's CPU at once
    assert state.jobs.get_job(JOB).state == JobState.RUNNING
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
    [said] = events(state, claims.UNDECIDED)
    assert "its run raised on the referee's cpu" in said and "the job asks for cuda" in said, said
    assert paid(state) == {} and node(state, G1) == node(state, G2) == (1, 1, 1)
    assert leases(state, G3, LATER) == [TASK]  # other CUDA nodes settle it


@pytest.mark.parametrize("device", ["any", "cuda"])
def test_a_cuda_timeout_is_a_claim_unless_its_job_asks_for_cuda(
    state: Store, blobs: BlobStore, tmp_path: Path, device: str
) -> None:
    """An "any" task's limit is the reference CPU's (CPU nodes run it too); a CUDA job sizes its
    limit for a GPU, which the referee's CPU cannot judge: its timeout stays the node's own."""
    job_of_rows(state, blobs, tmp_path, *NODES, device=device)
    assert claim(state, G1, AVOID, SLOW) is True
    if device == "any":
        assert task_failures(state) == 0 and node(state, G1) == (1, 1, 1)  # a claim's refusal
    else:
        assert task_failures(state) == 1 and node(state, G1) == (1, 0, 1)  # an attempt, a failure, no refusal
