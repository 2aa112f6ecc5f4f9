"""Two colluding nodes cannot fail an inference task by its length: the referee reviews a
contested inference task in parts of rows (services/verification/reviews.py, RowPart), each
part one request of its sandboxed child, so a task longer than one request is still run whole.

A real coordinator (SQLite) with its real warm sandbox and a real exported program; the task
and the two claims go through the repositories as a node's calls would leave them."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from coordinator import app as coordinator_app
from coordinator.app import Coordinator
from coordinator.repositories.jobs import NewTask
from coordinator.services.sandboxed import referee
from tensorgrid.spec import task_id_for
from tensorgrid.types import ErrorKind, JobState, TaskError
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.jobs import new_job
from tests.security.review_requests import each_within, review_requests
from tests.unit.coordinator.test_storage import CPU, add_nodes

JOB = "ab" * 32
TASK = task_id_for(JOB, 0)
A, B = "0x" + "aa" * 20, "0x" + "bb" * 20
REFEREE_TIME_S = 5.0  # room for a fresh child's program load on a loaded machine
BATCH = 4
SPINS = 12
MAX_ROWS = 4096


class _Spinning(torch.nn.Module):
    """A linear layer plus parameter-free work: SPINS (rows × 4096) @ (4096 × 4096) products,
    a few milliseconds a batch of 4 rows each; rows stay independent."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide, mix = x.repeat(1, 512), torch.full((4096, 4096), 1.0 / 4096)
        for _ in range(SPINS):
            wide = torch.tanh(wide @ mix)
        return self.linear(x) + 0.0 * wide[:, :4]


def _rows_for(seconds: float) -> int:
    """Rows (whole batches) the program takes about `seconds` over on one thread, here and now."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, x = _Spinning().eval(), torch.rand(BATCH, 8)
        with torch.no_grad():
            net(x)
            started = time.monotonic()
            for _ in range(3):
                net(x)
        batch_s = (time.monotonic() - started) / 3
    finally:
        torch.set_num_threads(old)
    return BATCH * max(8, min(MAX_ROWS // BATCH, math.ceil(seconds / batch_s)))


@pytest.fixture
def app(make_coordinator: Callable[..., Coordinator], monkeypatch: pytest.MonkeyPatch) -> Coordinator:
    """A coordinator whose referee gives a request REFEREE_TIME_S, at the priority of this
    process (which times the program: at nice 10 on a loaded machine the child would run at a
    small fraction of that pace, and no part would fit)."""
    monkeypatch.setattr(coordinator_app, "REFEREE_NICE", 0)
    return make_coordinator(referee_time_s=REFEREE_TIME_S)


def _contested_job(app: Coordinator, tmp_path: Path, rows: int) -> None:
    """An inference job of one task of `rows` rows (a node may take 60 s for it: a review
    budget of 240 s), which two nodes in turn lease and lie about."""
    model, inputs = tmp_path / "spinning.pt2", tmp_path / "rows.safetensors"
    export_program(_Spinning().eval(), (torch.rand(BATCH, 8),), model)
    torch.manual_seed(1)
    save_tensors({"x": torch.rand(rows, 8)}, inputs)
    settings = {"task_kind": "inference", "batch_size": BATCH, "input_names": ["x"]}
    job = new_job(
        JOB,
        kind="inference",
        model=app.blobs.put_file(model),
        settings_json=json.dumps(settings),
        time_limit_ms=60_000,
        max_attempts=2,  # two believed claims fail the job
    )
    app.store.jobs.create_job(job, [NewTask(0, TASK, app.blobs.put_file(inputs), rows)], int(time.time() * 1000))
    add_nodes(app.store, (A, CPU), (B, CPU))
    lie = TaskError(ErrorKind.INVALID_INPUT, "input tensor 'x' is not a tensor file (a lie)")
    for node in (A, B):
        (lease,), _ = app.store.tasks.lease_tasks(node, 1, int(time.time() * 1000), app.config.timing)
        app.store.tasks.fail_task(node, lease.task_id, lease.attempt, lie, int(time.time() * 1000))
    assert app.store.tasks.get_task(TASK).state == "contested"


@pytest.mark.timeout(400)  # the referee's child starts (torch imports) on a loaded machine
def test_two_colluding_claims_on_an_inference_task_longer_than_a_referee_request_no_longer_fail_it(
    app: Coordinator, tmp_path: Path
) -> None:
    """Abuse: two nodes lie that a valid inference task's input is bad, on a task whose rows
    take the referee about two of its requests. Before, the review ran the whole input in one
    request, which timed out, and the claims were confirmed: the job failed. Now the referee
    runs it a part of whole batches a turn, each within its limit, and disproves the claims."""
    rows = _rows_for(2 * REFEREE_TIME_S)
    _contested_job(app, tmp_path, rows)
    asyncio.run(app.runtime.refereed(referee(app.runtime, app.blobs).warm))  # its start is not a request

    def between() -> None:
        if app.store.tasks.get_task(TASK).state == "contested":  # between parts: nobody blamed yet
            assert app.store.jobs.get_job(JOB).state == JobState.RUNNING

    requests = review_requests(app.verification.reviews, TASK, between)
    assert len(requests) >= 3, (rows, requests)  # two parts at least, then the empty look
    assert each_within(requests, REFEREE_TIME_S + 2.0), requests
    reached = [r.after.step for r in requests if r.after.step]
    assert reached == sorted(reached) and all(step % BATCH == 0 for step in reached), (
        requests
    )  # whole batches, in order
    task = app.store.tasks.get_task(TASK)
    assert task.state == "pending", task  # no attempt spent: the job goes on
    assert app.store.jobs.get_job(JOB).state == JobState.RUNNING
    [disproved] = [e.message for e in app.store.jobs.events_after(JOB, 0) if "claims disproved" in e.message]
    assert "ran over the whole input" in disproved and "parts)" in disproved, disproved
    assert not any((app.blobs.root / "reviews").iterdir())  # its progress is gone with the review
