"""Out-of-memory reports from CUDA runs against a real coordinator and its real referee, whose measured
run is a fresh sandboxed CPU child polled for its VmHWM (services.verification.memory;
repositories.limit_claims, "Over its memory limit, from a CUDA run").

The nodes declare device_kind "cuda" (their own word at registration, as any node may; the real node
daemon refuses --device cuda without a GPU and this machine has none, so they are simulated: their
leases and reports go through the coordinator's task repository as the node API's do).

- Two CUDA nodes lying that a small program ran out of memory, on a task with one attempt: the
  referee's measured run holds little (within half the 1 GiB limit), which does not disprove a CUDA
  node's report but proves nothing against the submitter: undecided, nobody paid, the job not failed,
  the task left to nodes that never claimed it. On main the first lie was its node's own failure and
  spent the task's one attempt: the job failed.
- Two CUDA nodes reporting a program that copies its input past 1.25× its limit (on an "any" job: the
  limit is the grid's reference CPU's, which a CPU node would meet too): the referee's run passes
  1.25× the limit, the job fails naming it and both are paid by their draws, unblamed. On main each
  report was its node's own failure, unpaid, until the task's attempts were spent.
- On a job asking for CUDA (a limit sized for a GPU) the report stays the node's own failure."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from coordinator.app import Coordinator
from coordinator.db import schema
from coordinator.repositories import claims
from coordinator.repositories.jobs import NewTask
from coordinator.repositories.ledger import claim_pay
from coordinator.repositories.ledger.credits import set_job_price
from tensorgrid.crypto import normalize_address
from tensorgrid.types import ErrorKind, JobState, TaskError
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.jobs import new_job
from tests.security.test_memory_limits import JOB, LIMIT, ROWS, TASK, WIDTH, _Hungry, _Small, app  # noqa: F401
from tests.unit.coordinator.test_program_errors import node
from tests.unit.coordinator.test_storage import CPU, GPU, add_nodes

pytestmark = pytest.mark.integration
REWARD = 10**15
G1, G2, P1 = "0x" + "c1" * 20, "0x" + "c2" * 20, "0x" + "c3" * 20
LIE = TaskError(ErrorKind.OUT_OF_MEMORY, "CUDA out of memory. Tried to allocate 2.00 GiB (a lie)")


def _job(coord: Coordinator, tmp_path: Path, program: torch.nn.Module, device: str = "any") -> None:
    """One inference task of ROWS rows under LIMIT, one attempt, priced; CUDA nodes G1, G2, a CPU node P1."""
    model, inputs = tmp_path / "program.pt2", tmp_path / "x.safetensors"
    export_program(program.eval(), (torch.zeros(4, WIDTH),), model)
    save_tensors({"x": torch.randn(ROWS, WIDTH)}, inputs)
    settings = {"task_kind": "inference", "batch_size": 0, "input_names": ["x"]}
    job = new_job(
        JOB, kind="inference", model=coord.blobs.put_file(model), settings_json=json.dumps(settings),
        device=device, max_attempts=1,
    )  # fmt: skip
    coord.store.jobs.create_job(job, [NewTask(0, TASK, coord.blobs.put_file(inputs), ROWS)], _now())
    set_job_price(coord.store.engine, JOB, REWARD, 3 * REWARD)
    with coord.store.engine.begin() as conn:
        conn.execute(schema.tasks.update().values(memory_limit_bytes=LIMIT))
    add_nodes(coord.store, (G1, GPU), (G2, GPU), (P1, CPU))


def _now() -> int:
    return int(time.time() * 1000)


def _report(coord: Coordinator, address: str, error: TaskError) -> None:
    (lease,), _ = coord.store.tasks.lease_tasks(address, 1, _now(), coord.config.timing)
    coord.store.tasks.fail_task(address, lease.task_id, lease.attempt, error, _now())


def _review(coord: Coordinator) -> dict[str, str | None]:
    """The referee's review of the contested task (its real measured child); each claim's verdict."""
    assert coord.store.tasks.get_task(TASK).state == "contested"
    asyncio.run(coord.verification.reviews.review_pending(lambda job, done: None))
    c = schema.failure_claims.c
    with coord.store.engine.connect() as conn:
        return {r.node: r.verdict for r in conn.execute(select(c.node, c.verdict).where(c.task_id == TASK))}


def _credited(coord: Coordinator) -> dict[str, int]:
    c = schema.credits.c
    with coord.store.engine.connect() as conn:
        return {r.node: int(r.amount_wei) for r in conn.execute(select(c.node, c.amount_wei).where(c.job_id == JOB))}


@pytest.mark.timeout(300)  # the referee's measuring child starts (torch imports) on a loaded machine
def test_two_cuda_nodes_lying_that_a_small_program_ran_out_of_memory_fail_nothing(
    app: Coordinator,  # noqa: F811
    tmp_path: Path,
) -> None:
    _job(app, tmp_path, _Small())
    for liar in (G1, G2):
        _report(app, liar, LIE)
    assert _review(app) == {G1: claims.OTHER_DEVICE, G2: claims.OTHER_DEVICE}
    assert app.store.tasks.get_task(TASK).state == "pending"
    assert app.store.jobs.get_job(JOB).state == JobState.RUNNING
    events = app.store.jobs.events_after(JOB, 0)
    [said] = [e.message for e in events if e.kind == claims.UNDECIDED]
    assert "claims undecided for 2 claimants that ran it on another device class than the referee's (cpu)" in said
    assert "within 0.5× its memory limit of 1024 MiB" in said, said  # the referee's run: clean
    assert node(app.store, G1) == node(app.store, G2) == (1, 1, 1)  # the refusal each claim held
    assert _credited(app) == {}
    for liar in (G1, G2):  # never leased to a claimant again
        assert app.store.tasks.lease_tasks(liar, 1, _now() + 10**6, app.config.timing)[0] == []
    (lease,), _ = app.store.tasks.lease_tasks(P1, 1, _now() + 10**6, app.config.timing)
    assert lease.task_id == TASK  # a node that never claimed runs it


@pytest.mark.timeout(300)
def test_cuda_nodes_reporting_a_program_over_its_limit_are_confirmed_and_paid(
    app: Coordinator,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: 0)  # each claimant wins a draw it has a share in
    _job(app, tmp_path, _Hungry())
    for claimant in (G1, G2):
        _report(app, claimant, TaskError(ErrorKind.OUT_OF_MEMORY, "CUDA out of memory. Tried to allocate 1.50 GiB"))
    assert _review(app) == {G1: claims.FAILED, G2: claims.FAILED}
    job = app.store.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and job.error.startswith("task 0 failed for good: claims confirmed"), job
    assert "out_of_memory: its program needs more than its memory limit of 1024 MiB" in job.error, job.error
    assert node(app.store, G1) == node(app.store, G2) == (0, 0, 0)  # unblamed: refusals taken back
    [drawn] = [e.message for e in app.store.jobs.events_after(JOB, 0) if "units of work" in e.message]
    assert f"of its {ROWS} units of work" in drawn, drawn
    assert _credited(app) == {normalize_address(G1): REWARD, normalize_address(G2): REWARD}, drawn


@pytest.mark.timeout(120)
def test_a_cuda_out_of_memory_on_a_job_asking_for_cuda_stays_the_nodes_own(
    app: Coordinator,  # noqa: F811
    tmp_path: Path,
) -> None:
    _job(app, tmp_path, _Small(), device="cuda")
    _report(app, G1, LIE)
    job = app.store.jobs.get_job(JOB)
    assert job.state == JobState.FAILED, job  # its one attempt spent
    assert node(app.store, G1) == (1, 0, 1)  # a failure, no refusal
