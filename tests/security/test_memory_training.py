"""Memory claims on training tasks, against the coordinator's real referee: its measured run is the
task's inner steps in parts, each a fresh sandboxed child polled for its VmHWM, the training state
carried between them (kinds.training.review.measure_training, services.verification.memory_parts),
as inference's and generation's are one measured run (test_memory_limits.py, test_memory_generation.py).

- Two nodes lying OUT_OF_MEMORY on a small train program are refused: every inner step ran, in
  parts, well within half the limit; the task goes to an honest node, which trains it, and the job
  succeeds. On main a training task's report was its node's own failure: no claim, never reviewed,
  an attempt spent per lie (two colluders failed the task of a job with max_attempts 2).
- A train program that holds 2 GiB a step under a 1 GiB limit, which intake did not see (the limit
  is lowered after planning, as a program whose memory depends on its shard passes intake's one step
  on the first shard): the claims are confirmed, the task ends alone (its round has no other, so the
  job fails at the round manager's next look, naming that), the claimants unblamed. On main each
  report was its node's own failure, unpaid, until the task's attempts were spent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from coordinator.db import schema
from coordinator.services.intake import plan_job
from coordinator.services.training.rounds import RoundManager
from tensorgrid.spec import TrainingSpec, canonical_json, job_id_for, spec_hash
from tensorgrid.types import ErrorKind, JobState, TaskError
from tensorgrid.workloads.model import export_program
from tests.datasets import save_digits
from tests.unit.coordinator.test_program_errors import node
from tests.unit.coordinator.test_rounds import CPU, SUBMITTER, deliver, work
from tests.unit.coordinator.test_storage import add_nodes

pytestmark = pytest.mark.integration
LIMIT = 1 << 30  # a fresh child holds ~300 MiB with torch: a small program stays within half of it
A, B, C = "0x" + "a1" * 20, "0x" + "b2" * 20, "0x" + "c3" * 20
SAID = TaskError(ErrorKind.OUT_OF_MEMORY, "the task used 1100 MiB, over its memory limit of 1024 MiB")


class Hungry(torch.nn.Module):
    """A small classifier that also holds 2 GiB a step, whatever its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        big = out[:1, :1].reshape(1, 1).expand(2**19, 1024).contiguous()  # 2**29 floats
        return out + big.sum() * 0


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Coordinator]:
    config = CoordinatorConfig(data_dir=tmp_path / "coord", database_url=f"sqlite:///{tmp_path / 's.db'}")
    coordinator = Coordinator(config)
    yield coordinator
    asyncio.run(coordinator.runtime.stop())  # its referee's children too
    coordinator.runtime.shutdown()
    coordinator.store.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def claimed(app: Coordinator, tmp_path: Path, module: torch.nn.Module) -> str:
    """A training job of one round of one task (4 inner steps, max_attempts 2), its task's limit
    lowered to LIMIT after planning; nodes A and B each lease it and report OUT_OF_MEMORY; the referee
    reviews their claims, one measured part a turn. The job's id."""
    save_digits(tmp_path / "digits.safetensors")
    torch.manual_seed(0)
    export_program(module.train(), (torch.randn(4, 64),), tmp_path / "train.pt2")
    train, dataset = app.blobs.put_file(tmp_path / "train.pt2"), app.blobs.put_file(tmp_path / "digits.safetensors")
    spec = TrainingSpec(
        train_program=train, dataset=dataset, rounds=1, workers_per_round=1, inner_steps=4, batch_size=8,
        max_attempts=2, nonce="n",
    )  # fmt: skip
    raw = canonical_json(spec)
    sh = spec_hash(raw)
    job_id = job_id_for(SUBMITTER, sh)
    job, tasks = plan_job(app.kinds, raw, SUBMITTER, sh, job_id, app.blobs, app.config.limits)
    app.store.jobs.create_job(job, tasks, now_ms=now_ms())
    with app.store.engine.begin() as conn:
        conn.execute(schema.tasks.update().values(memory_limit_bytes=LIMIT))
    add_nodes(app.store, (A, CPU), (B, CPU), (C, CPU))
    for claimant in (A, B):
        (lease,), _ = app.store.tasks.lease_tasks(claimant, 1, now_ms(), app.config.timing)
        app.store.tasks.fail_task(claimant, lease.task_id, lease.attempt, SAID, now_ms())
    assert app.store.tasks.get_task(tasks[0].task_id).state == "contested"  # main: each report the node's own
    asyncio.run(app.verification.reviews.review_pending(lambda job, done: None))
    return job_id


def messages(app: Coordinator, job_id: str, kind: str) -> list[str]:
    return [e.message for e in app.store.jobs.events_after(job_id, 0) if e.kind == kind]


@pytest.mark.timeout(300)  # the referee's measuring children start (torch imports) on a loaded machine
def test_two_nodes_lying_that_a_small_train_program_ran_out_of_memory_are_refused(
    app: Coordinator, tmp_path: Path
) -> None:
    job_id = claimed(
        app, tmp_path, torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    )
    [disproved] = [m for m in messages(app, job_id, "reissued") if "claims disproved" in m]
    assert "ran every one of its 4 inner steps (3 measured parts)" in disproved, disproved
    assert "within 0.5× its memory limit of 1024 MiB" in disproved, disproved
    assert node(app.store, A) == node(app.store, B) == (1, 1, 1)  # each keeps its refusal
    got = work(app, C, tmp_path)  # an honest node that never claimed trains it
    assert got is not None
    deliver(app, C, *got)
    assert asyncio.run(RoundManager(app.runtime, app.store, app.blobs, b"\0" * 32).advance(job_id)) == "finished"
    assert app.store.jobs.get_job(job_id).state == JobState.SUCCEEDED


@pytest.mark.timeout(300)
def test_a_train_program_over_its_memory_limit_ends_its_task_naming_the_limit(app: Coordinator, tmp_path: Path) -> None:
    job_id = claimed(app, tmp_path, Hungry())
    [ended] = messages(app, job_id, "ended")
    assert "its program needs more than its memory limit of 1024 MiB" in ended or "memory cap" in ended, ended
    assert "after inner step 0" in ended, ended  # its first step passed the limit: its claimants' draws pay nothing
    assert app.store.jobs.get_job(job_id).state == JobState.RUNNING  # the task ended, not the job
    assert node(app.store, A) == node(app.store, B) == (0, 0, 0)  # unblamed: refusals taken back
    assert asyncio.run(RoundManager(app.runtime, app.store, app.blobs, b"\0" * 32).advance(job_id)) == "failed"
    job = app.store.jobs.get_job(job_id)
    assert job.state == JobState.FAILED and "every one of its tasks failed for good" in job.error, job.error
