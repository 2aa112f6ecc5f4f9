"""A submitter's program raising on a node (ErrorKind.PROGRAM_ERROR), on SQLite and PostgreSQL:
it is a workload claim, reviewed as an invalid-input claim is (repositories.claims; from a CUDA
run the referee's clean CPU run cannot disprove it: test_cuda_claims.py); an old node's execution
error stays its own. A review whose run raises too ends the task
at once: its job fails naming the task and the referee's error, and the claimants are paid for
the rows the failure took (repositories.ledger.claim_pay); a clean run refuses them; a referee
run that fails for a reason of its own (its memory limit) sends the task on to other nodes.

The referee's runs are in process here (tests/security/test_program_errors.py runs real node
daemons and the coordinator's sandboxed referee)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coordinator.db import schema
from coordinator.repositories.ledger import claim_pay
from coordinator.repositories.ledger.credits import set_job_price
from coordinator.repositories.store import Store
from tensorgrid.blobs import BlobStore
from tensorgrid.crypto import normalize_address
from tensorgrid.sandbox import SandboxFailure
from tensorgrid.types import Capabilities, ErrorKind, JobState, TaskError
from tensorgrid.workloads.tensorfile import save_tensors
from tests.unit.coordinator import test_review_parts as parts
from tests.unit.coordinator import test_storage as storage
from tests.unit.coordinator.test_claim_pay import REWARD, paid
from tests.unit.coordinator.test_claims import AVOID, TASK, claim
from tests.unit.coordinator.test_review_parts import Clock, turn
from tests.unit.coordinator.test_review_rows import BATCH, ROWS, Rows, reviews
from tests.unit.coordinator.test_storage import CPU, GPU, JOB, add_nodes

state, blobs, clock = parts.state, parts.blobs, parts.clock  # the fixtures: a store on each database

A, B = "0x" + "aa" * 20, "0x" + "bb" * 20
RAISED = TaskError(ErrorKind.PROGRAM_ERROR, "the model failed: IndexError: index out of range in self")


def node(state: Store, address: str) -> tuple[int, int, int]:
    """(failures, rejections, consecutive failures) the coordinator holds against the node."""
    with state.engine.connect() as conn:
        row = conn.execute(schema.nodes.select().where(schema.nodes.c.address == address)).one()
    return row.failures, row.rejections, row.consecutive_failures


def task_failures(state: Store) -> int:
    with state.engine.connect() as conn:
        return int(conn.execute(schema.tasks.select().where(schema.tasks.c.task_id == TASK)).one().failures)


def job_of_rows(
    state: Store, blobs: BlobStore, tmp_path: Path, *nodes: tuple[str, Capabilities], device: str = "any"
) -> None:
    """The job's one task of ROWS rows (row i holds i), three attempts, priced at three rewards."""
    source = tmp_path / "rows.safetensors"
    save_tensors({"x": torch.arange(ROWS, dtype=torch.float32).repeat(3, 1).T.contiguous()}, source)
    model, task_input = blobs.put_bytes(b"a program"), blobs.put_file(source)
    settings = json.dumps({"batch_size": BATCH})
    storage.make_job(
        state, 1, device=device, max_attempts=3, model=model, task_input=task_input, settings_json=settings
    )
    set_job_price(state.engine, JOB, REWARD, 3 * REWARD)
    add_nodes(state, *nodes)


def test_a_program_error_from_a_cpu_node_is_a_claim_and_a_second_sends_it_to_review(
    state: Store, blobs: BlobStore, tmp_path: Path
) -> None:
    """Before: each report spent one of the task's attempts as the node's failure, and backed it off."""
    job_of_rows(state, blobs, tmp_path, (A, CPU), (B, CPU))
    assert claim(state, A, AVOID, RAISED) is True
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0  # no attempt spent
    assert node(state, A) == (1, 1, 1)  # what a first claim costs: one refusal (its backoff), as any claim
    assert claim(state, B, 2 * AVOID, RAISED) is True
    assert state.tasks.get_task(TASK).state == "contested"  # the referee runs it before anyone is believed
    said = [e.message for e in state.jobs.events_after(JOB, 0) if e.kind in ("reissued", "contested")]
    assert said[0].startswith("unconfirmed program_error") and said[1].startswith("program_error claimed by a second")


def test_a_cuda_node_running_a_cpu_task_claims_and_an_old_nodes_execution_error_is_its_own(
    state: Store, blobs: BlobStore, tmp_path: Path
) -> None:
    job_of_rows(state, blobs, tmp_path, (A, GPU), (B, CPU), device="cpu")
    assert claim(state, A, AVOID, RAISED) is True  # run on CPU, as the task asks: a claim
    assert task_failures(state) == 0 and node(state, A) == (1, 1, 1)
    old = TaskError(ErrorKind.EXECUTION, "the model failed: IndexError: index out of range in self")
    assert claim(state, B, 2 * AVOID, old) is True  # a node from before PROGRAM_ERROR: as before
    assert task_failures(state) == 1 and node(state, B) == (1, 0, 1)
    assert state.tasks.get_task(TASK).state == "pending"


def test_a_review_whose_run_raises_ends_the_task_at_once_and_pays_its_claimants(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the job went on running, the task to up to its one attempt left for another node."""
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: 0)  # both claimants win their draw
    job_of_rows(state, blobs, tmp_path, (A, CPU), (B, CPU))
    claim(state, A, AVOID, RAISED)
    claim(state, B, 2 * AVOID, RAISED)
    r = reviews(state, blobs, Rows(clock, fail_at=ROWS - 1))  # the program raises on the last batch
    r.budget_factor = 100.0
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED, job  # two of its three attempts spent: ended by the verdict
    assert job.error.startswith("task 0 failed for good: claims confirmed"), job.error
    assert f"row {ROWS - 1} is malformed" in job.error and "program_error" in job.error, job.error
    assert state.tasks.get_task(TASK).state == "cancelled"  # no other node runs it
    assert paid(state) == {normalize_address(A): REWARD, normalize_address(B): REWARD}
    assert node(state, A) == node(state, B) == (0, 0, 0)  # their refusals taken back, failures too


def test_a_clean_review_refuses_the_program_error_claimants(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    job_of_rows(state, blobs, tmp_path, (A, CPU), (B, CPU))
    claim(state, A, AVOID, RAISED)
    claim(state, B, 2 * AVOID, RAISED)
    turn(reviews(state, blobs, Rows(clock)))  # every row runs: the program never raised
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
    assert state.jobs.get_job(JOB).state != JobState.FAILED
    assert node(state, A) == node(state, B) == (1, 1, 1)  # each keeps its refusal
    assert paid(state) == {}


def test_a_referee_run_over_its_memory_limit_confirms_but_the_task_goes_on(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """The referee's limit is its own, not the input's: nodes with more memory may run it."""

    def over(model_sha: str, settings: dict[str, object], source: Path, out: Path) -> None:
        raise SandboxFailure("out_of_memory", "over the referee's memory limit")

    job_of_rows(state, blobs, tmp_path, (A, CPU), (B, CPU))
    claim(state, A, AVOID, RAISED)
    claim(state, B, 2 * AVOID, RAISED)
    turn(reviews(state, blobs, over))  # type: ignore[arg-type]
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 2  # confirmed: spent
    assert state.jobs.get_job(JOB).state != JobState.FAILED  # its last attempt for another node


def test_a_task_whose_job_goes_on_without_it_ends_alone_after_a_raising_review(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """Training's tasks (a round closes on its quorum): the verdict fails no whole job, and the task
    goes to no more nodes (each would fail it too, and be paid for it): it ends alone. Before, it
    went on to its attempts, and its last one failed the whole job all the same."""
    state.reviews.goes_on = frozenset({parts.KIND})
    job_of_rows(state, blobs, tmp_path, (A, CPU), (B, CPU))
    claim(state, A, AVOID, RAISED)
    claim(state, B, 2 * AVOID, RAISED)
    r = reviews(state, blobs, Rows(clock, fail_at=0))
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    assert state.tasks.get_task(TASK).state == "failed" and task_failures(state) == 2
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.RUNNING and job.task_failures == 1, job
    [ended] = [e for e in state.jobs.events_after(JOB, 0) if e.kind == "ended"]
    assert "failed for good" in ended.message and "its job goes on without it" in ended.message, ended
