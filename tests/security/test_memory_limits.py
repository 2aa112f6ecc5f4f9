"""A hostile submitter cannot have honest nodes run a program that needs more memory than its
task's limit for free, nor have them blamed for it; and a node cannot lie that a small program
did: real processes throughout (the referee's measured run is a fresh sandboxed child polled for
its VmHWM, as a node's executor polls its worker's: services.verification.memory).

Hungry: a devnet (anvil, the contracts, a coordinator and its referee) and two REAL node daemons.
The program copies its input HUNGRY_COPIES times (1.5 GiB for the shard) under a limit of 1 GiB.
Each node's run meets the limit and reports OUT_OF_MEMORY, a claim (repositories.limit_claims, "Over its
memory limit"); the second sends the task to the referee, whose run passes 1.25× the limit: the job
fails naming the memory limit after two node runs and one review, each node drew once and was paid
what it won, and neither is held a failure. On main each report was its node's own failure: an
attempt spent, a failure and its backoff, nothing paid, until max_attempts nodes had run it. Its
memory grows with its rows, so intake's measured probe (4 rows here) holds little and accepts it
(coordinator.kinds.inference.vetting, "Memory at intake"): the claims settle what the probe cannot.

Small: an in-process coordinator with its real referee; two nodes lie OUT_OF_MEMORY on a program
that holds little: the referee's measured run stays within half the limit and refuses them."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from coordinator.app import Coordinator
from coordinator.db import schema
from coordinator.repositories.jobs import NewTask
from coordinator.services.measured import measure_rows
from tensorgrid.crypto import Signer
from tensorgrid.devnet import ChainGrid
from tensorgrid.sandbox.measured import Measured
from tensorgrid.spec import VerificationSpec, task_id_for
from tensorgrid.types import ErrorKind, JobState, TaskError
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.integration.conftest import Stopper, stopper, wait_for  # noqa: F401  (fixtures)
from tests.jobs import new_job
from tests.security.conftest import start_devnet
from tests.security.test_program_errors import client_of, paid_their_draws
from tests.unit.coordinator.test_program_errors import node
from tests.unit.coordinator.test_storage import CPU, add_nodes

pytestmark = pytest.mark.integration
REWARD = 10**15
ROWS, WIDTH = 2000, 1024
HUNGRY_COPIES = 192  # 2000 × 1024 × 4 B × 192: 1.5 GiB for the shard at once, past 1.25 × LIMIT
LIMIT = 1 << 30  # a node's worker holds ~310 MiB with torch: a small program stays within half of it


class _Hungry(torch.nn.Module):
    """Honestly too big for its limit: its rows copied side by side, then summed (row-independent)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] * HUNGRY_COPIES, dim=1).sum(dim=1, keepdim=True)


class _Small(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (2 * x).sum(dim=1, keepdim=True)


@pytest.fixture
def devnet(tmp_path: Path, stopper: Stopper) -> Iterator[ChainGrid]:  # noqa: F811
    yield from start_devnet(tmp_path, stopper, 2)


@pytest.mark.timeout(400)  # anvil, the contracts, the coordinator, two nodes and the referee's children start
def test_honest_nodes_running_a_program_over_its_memory_limit_are_paid_and_not_blamed(
    devnet: ChainGrid, tmp_path: Path
) -> None:
    nodes = [Signer.from_hex(key).address for key in devnet.node_keys]
    model, inputs = tmp_path / "hungry.pt2", tmp_path / "x.safetensors"
    export_program(_Hungry().eval(), (torch.zeros(4, WIDTH),), model)
    save_tensors({"x": torch.randn(ROWS, WIDTH)}, inputs)
    with client_of(devnet) as client:
        job_id = client.submit_inference(
            model, inputs, shard_rows=ROWS, batch_size=0, device="cpu", max_attempts=3,
            reward_per_task_wei=REWARD, task_memory_limit_bytes=LIMIT,
            # no canary: one of the shard (0.5% a lease, leased at once to the other node) runs and fails
            # too, adding its failures to the events and records counted exactly below (~1 run in 100)
            verification=VerificationSpec(canary_rate=0.0),
        ).job_id  # fmt: skip
        final = client.wait(job_id)
        assert final.state == JobState.FAILED, final
        assert final.error.startswith("task 0 failed for good: claims confirmed"), final.error
        assert "out_of_memory: its program needs more than its memory limit of 1024 MiB" in final.error, final.error
        events = list(client.watch(job_id))
        failures = [e for e in events if e.kind in ("reissued", "contested")]
        assert [e.kind for e in failures] == ["reissued", "contested"], failures  # two runs: no third
        assert failures[0].message.startswith("unconfirmed out_of_memory"), failures
        assert {e.node.lower() for e in failures} == {n.lower() for n in nodes}, failures  # both real nodes
        [drawn] = [e.message for e in events if e.kind == "claims_paid" and "units of work" in e.message]
        assert f"of its {ROWS} units of work" in drawn, drawn
        paid_their_draws(client, job_id, nodes, drawn, REWARD)


A, B = "0x" + "a1" * 20, "0x" + "b2" * 20
JOB = "77" * 32
TASK = task_id_for(JOB, 0)


@pytest.fixture
def app(make_coordinator: Callable[..., Coordinator]) -> Coordinator:
    return make_coordinator()  # default settings: the referee's cap (4 GiB) is over 1.25 × LIMIT


@pytest.mark.timeout(300)  # the referee's measuring child starts (torch imports) on a loaded machine
def test_two_nodes_lying_that_a_small_program_ran_out_of_memory_are_refused(app: Coordinator, tmp_path: Path) -> None:
    model, inputs = tmp_path / "small.pt2", tmp_path / "x.safetensors"
    export_program(_Small().eval(), (torch.zeros(4, WIDTH),), model)
    save_tensors({"x": torch.randn(ROWS, WIDTH)}, inputs)
    settings = {"task_kind": "inference", "batch_size": 0, "input_names": ["x"]}
    job = new_job(JOB, kind="inference", model=app.blobs.put_file(model), settings_json=json.dumps(settings))
    app.store.jobs.create_job(job, [NewTask(0, TASK, app.blobs.put_file(inputs), ROWS)], int(time.time() * 1000))
    with app.store.engine.begin() as conn:
        conn.execute(schema.tasks.update().values(memory_limit_bytes=LIMIT))
    add_nodes(app.store, (A, CPU), (B, CPU))
    lie = TaskError(ErrorKind.OUT_OF_MEMORY, "the task used 1100 MiB, over its memory limit of 1024 MiB (a lie)")
    for liar in (A, B):
        (lease,), _ = app.store.tasks.lease_tasks(liar, 1, int(time.time() * 1000), app.config.timing)
        app.store.tasks.fail_task(liar, lease.task_id, lease.attempt, lie, int(time.time() * 1000))
    assert app.store.tasks.get_task(TASK).state == "contested"
    asyncio.run(app.verification.reviews.review_pending(lambda job, done: None))
    assert app.store.tasks.get_task(TASK).state == "pending"
    assert app.store.jobs.get_job(JOB).state != JobState.FAILED
    [disproved] = [e.message for e in app.store.jobs.events_after(JOB, 0) if "claims disproved" in e.message]
    assert "within 0.5× its memory limit of 1024 MiB" in disproved, disproved
    assert node(app.store, A) == node(app.store, B) == (1, 1, 1)  # each keeps its refusal


class _Endless(torch.nn.Module):
    """About 6 TFLOP in a few graph nodes (minutes of a core), holding ~0.6 GiB: a measured run
    that outlasts the test, under the limit it is measured against."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = x.repeat(4, 4)  # 8000 × 4096
        for _ in range(6):
            big = torch.tanh(big @ big.T @ big / 2**20)
        return big[: x.shape[0], :1].contiguous()


@pytest.mark.timeout(300)
def test_a_coordinator_stopping_kills_a_memory_reviews_child(app: Coordinator, tmp_path: Path) -> None:
    """Before: the measured run's child was no child of the runtime's, so stop() left it running
    and the referee's thread (and the coordinator's shutdown) waited for its whole request."""
    model, inputs = tmp_path / "endless.pt2", tmp_path / "x.safetensors"
    export_program(_Endless().eval(), (torch.zeros(4, WIDTH),), model)
    save_tensors({"x": torch.randn(ROWS, WIDTH)}, inputs)
    rt = app.runtime
    done: list[object] = []

    def measure() -> None:
        done.append(measure_rows(rt, app.blobs, model, inputs, 0, None, LIMIT, LIMIT))

    worker = threading.Thread(target=measure)
    worker.start()
    wait_for(lambda: any(box.pid for box in list(rt._others)), 240, "the measured run's child")
    asyncio.run(rt.stop())
    worker.join()
    [measured] = done
    assert isinstance(measured, Measured) and measured.answer is None, measured  # cut short, not answered
    assert measured.failure is not None and measured.failure.kind == "crashed", measured
