"""Two colluding nodes cannot fail a job the referee cannot run: a real coordinator process whose
sandboxed referee gets a short --referee-time-s, and an inference task of one batch longer than
one referee request (parts cannot be made smaller than a batch). The review is undecided, not a
confirmation (repositories.claims, services/verification/reviews.py): the task goes back to
pending with no attempt spent, never to the claimants, and an honest node finishes the job."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch

from tensorgrid.client import Client
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import ErrorKind, TaskError
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.integration.adversaries import Pool, SimNode
from tests.integration.conftest import make_grid, stopper  # noqa: F401  (fixtures)
from tests.security.test_inference_reviews import _Spinning
from tests.security.test_peer_bounds import START_S, SUBMITTER, Grids, lied_about_twice, records

pytestmark = pytest.mark.integration
REFEREE_TIME_S = 1.0
MAX_ROWS = 8192


def _batch_for(seconds: float) -> int:
    """Rows of one batch the program takes at least `seconds` of one thread's CPU over, here:
    timed at the size itself, grown until it does (a product with a 4096×4096 matrix costs far
    less a row in a large batch than in a small one, so a rate measured on 16 rows sized the
    batch too small, and the referee ran it within a request: a clean verdict). CPU time, not
    wall: a loaded machine makes a batch look slower than the referee will find it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, rows = _Spinning().eval(), 16
        with torch.no_grad():
            net(torch.rand(rows, 8))
            while rows < MAX_ROWS:
                started = time.thread_time()
                net(torch.rand(rows, 8))
                took = time.thread_time() - started
                if took >= seconds:
                    break
                rows = min(MAX_ROWS, int(rows * min(8.0, max(1.25, 1.2 * seconds / max(took, 1e-6)))))
    finally:
        torch.set_num_threads(old)
    return rows


@pytest.mark.timeout(300)  # the coordinator and its referee's child start (torch imports) on a loaded machine
def test_two_colluding_claims_on_a_task_the_referee_cannot_run_no_longer_fail_the_job(
    make_grid: Grids,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Abuse: two nodes lie that a valid input is bad, on a task whose one batch takes the
    referee's CPU about three of its requests. On main each part (one batch: the smallest there
    is) timed out until the review budget (4 × the task's 1 s limit) was spent, the claims were
    confirmed and the job failed (max_attempts=2). Now two timeouts of a one-batch part make the
    review undecided: nothing spent, and an honest node that never claimed finishes the job."""
    grid = make_grid("--referee-time-s", str(REFEREE_TIME_S), "--referee-threads", "1")  # as the batch is sized
    grid.start_coordinator(timeout=START_S)
    rows = _batch_for(3 * REFEREE_TIME_S)
    model, inputs = tmp_path / "spinning.pt2", tmp_path / "rows.safetensors"
    export_program(_Spinning().eval(), (torch.rand(4, 8),), model)
    save_tensors({"x": torch.rand(rows, 8)}, inputs)
    with Client(grid.target, SUBMITTER) as client:
        job_id = client.submit_inference(
            model, inputs, shard_rows=rows, batch_size=rows, device="cpu", max_attempts=2, task_time_limit_s=1,
            verification=VerificationSpec(mode="none"),
        ).job_id  # fmt: skip
    lie = TaskError(ErrorKind.INVALID_INPUT, "input tensor 'x' is not a tensor file (a lie)")

    honest_node = SimNode(grid.target, "honest", Pool(), tmp_path)
    liars, honest, task_id = asyncio.run(lied_about_twice(grid, job_id, lie, lambda: honest_node))
    assert {lease.task_id for lease in honest_node.leases} == {task_id}  # never leased to a claimant again
    with Client(grid.target, SUBMITTER) as client:
        events = list(client.watch(job_id))
    kinds = [e.kind for e in events]
    assert kinds.count("contested") == 1 and kinds.count("undecided") == 1, kinds
    [said] = [e.message for e in events if e.kind == "undecided"]
    assert "claims undecided: the referee could not finish the task" in said, said
    assert not any("claims confirmed" in e.message for e in events), events
    [disproved] = [e for e in events if e.kind == "disproved"]  # the honest node's result, said on the job
    assert kinds.index("disproved") > kinds.index("undecided")
    assert disproved.message.startswith("2 claimants' claims disproved by a non-claimant's result"), disproved
    record = records(grid)
    assert [record[n].rejections for n in liars] == [1, 1]  # type: ignore[attr-defined]
    assert record[honest].completed == 1  # type: ignore[attr-defined]
