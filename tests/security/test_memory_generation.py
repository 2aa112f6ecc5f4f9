"""Memory claims on generation tasks, against the coordinator's real referee: its measured run is the
decoding loop in a fresh sandboxed child polled for its VmHWM (kinds.generation.replay
.measure_decoding, services.verification.memory), as for inference (test_memory_limits.py).

- Two nodes lying OUT_OF_MEMORY on a small decoder, on its task or on a check task of it, are refused:
  the decoding loop held well within half the limit. On main a generation task's report was its node's
  own failure (no claim, never reviewed), and a check task of a generation job was measured by
  inference's run of the rows, which a decoder's prompt file fails: the referee "confirmed" the lie
  and the job failed, the liars paid their draws.
- A decoder that holds 2 GiB under a 1 GiB limit: the claims are confirmed and the job fails naming
  the memory limit (on main: each report the node's own failure, unpaid, until max_attempts)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from coordinator.app import Coordinator
from coordinator.db import schema
from coordinator.repositories.jobs import NewTask
from tensorgrid.spec import task_id_for
from tensorgrid.types import ErrorKind, JobState, TaskError
from tensorgrid.workloads.tensorfile import save_tensors
from tests.decoders import TinyGPT, export_decoder, tiny_decoder
from tests.jobs import new_job
from tests.unit.coordinator.test_program_errors import node
from tests.unit.coordinator.test_storage import CPU, add_nodes

pytestmark = pytest.mark.integration
LIMIT = 1 << 30  # a fresh child holds ~300 MiB with torch: a small decoder stays within half of it
V, PROMPTS = 50, 16
A, B = "0x" + "a1" * 20, "0x" + "b2" * 20
JOB = "78" * 32
TASK = task_id_for(JOB, 0)
SETTINGS = {"generation": {"max_new_tokens": 4, "vocab_size": V}, "device": "any", "task_kind": "generation"}


class Hungry(torch.nn.Module):
    """A tiny decoder that also holds 2 GiB a forward pass, whatever its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_decoder()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.inner(tokens)
        big = logits[:1, :1, :1].reshape(1, 1).expand(2**19, 1024).contiguous()  # 2**29 floats
        return logits + big.sum() * 0


@pytest.fixture
def app(make_coordinator: Callable[..., Coordinator]) -> Coordinator:
    return make_coordinator()  # default settings: the referee's cap (4 GiB) is over 1.25 × LIMIT


def claimed(app: Coordinator, tmp_path: Path, module: TinyGPT | Hungry, *, as_check: bool = False) -> None:
    """A generation job's one task of PROMPTS prompts under LIMIT; nodes A and B each lease it and
    report OUT_OF_MEMORY; the referee reviews their claims (as_check: the task is a check task of
    the job, its settings the subject's, as a spot-check's are)."""
    model, prompts = tmp_path / "decoder.pt2", tmp_path / "p.safetensors"
    export_decoder(module, model)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, V, (PROMPTS, 8), generator=g)
    save_tensors({"tokens": tokens, "lengths": torch.full((PROMPTS,), 8), "seeds": torch.arange(PROMPTS)}, prompts)
    job = new_job(JOB, kind="generation", model=app.blobs.put_file(model), settings_json=json.dumps(SETTINGS))
    app.store.jobs.create_job(job, [NewTask(0, TASK, app.blobs.put_file(prompts), PROMPTS)], int(time.time() * 1000))
    with app.store.engine.begin() as conn:
        conn.execute(schema.tasks.update().values(memory_limit_bytes=LIMIT))
    add_nodes(app.store, (A, CPU), (B, CPU))
    said = TaskError(ErrorKind.OUT_OF_MEMORY, "the task used 1100 MiB, over its memory limit of 1024 MiB")
    for claimant in (A, B):
        kind(app, "generation")  # leased as a shard (a check task goes to its drawn checker alone)
        (lease,), _ = app.store.tasks.lease_tasks(claimant, 1, int(time.time() * 1000), app.config.timing)
        kind(app, schema.CHECK_KIND if as_check else "generation")  # reported on as a check task
        app.store.tasks.fail_task(claimant, lease.task_id, lease.attempt, said, int(time.time() * 1000))
    assert app.store.tasks.get_task(TASK).state == "contested"  # main: a shard's report was the node's own
    asyncio.run(app.verification.reviews.review_pending(lambda job, done: None))


def kind(app: Coordinator, task_kind: str) -> None:
    with app.store.engine.begin() as conn:
        conn.execute(schema.tasks.update().values(kind=task_kind))


@pytest.mark.timeout(300)  # the referee's measuring child starts (torch imports) on a loaded machine
@pytest.mark.parametrize("as_check", [False, True], ids=["task", "check-task"])
def test_two_nodes_lying_that_a_small_decoder_ran_out_of_memory_are_refused(
    app: Coordinator, tmp_path: Path, as_check: bool
) -> None:
    claimed(app, tmp_path, tiny_decoder(), as_check=as_check)
    job = app.store.jobs.get_job(JOB)
    assert job.state != JobState.FAILED, job.error
    [disproved] = [e.message for e in app.store.jobs.events_after(JOB, 0) if "claims disproved" in e.message]
    assert "within 0.5× its memory limit of 1024 MiB" in disproved, disproved
    assert node(app.store, A) == node(app.store, B) == (1, 1, 1)  # each keeps its refusal


@pytest.mark.timeout(300)
def test_a_decoder_over_its_memory_limit_fails_its_job_naming_the_limit(app: Coordinator, tmp_path: Path) -> None:
    claimed(app, tmp_path, Hungry())
    job = app.store.jobs.get_job(JOB)
    assert job.state == JobState.FAILED, job
    assert "out_of_memory: its program needs more than its memory limit of 1024 MiB" in job.error, job.error
    assert node(app.store, A) == node(app.store, B) == (0, 0, 0)  # unblamed: refusals taken back
