"""Malicious submitters against honest nodes, on a real grid (issue: fair to honest parties).

A submitter sends a program whose rows depend on each other, or on randomness, hoping every
check of an honest result disagrees and honest nodes get caught and slashed. The contract is
refused at intake; a program that hides its dependence from the intake probe (it appears
only in batches larger than the probe's) meets a referee that blames nobody. A Sybil that
farms trust on its own unpaid jobs gains nothing: it is checked every time and caught.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, select

from coordinator.db import schema as s
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.spec import VerificationSpec, task_id_for
from tensorgrid.types import JobState
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.integration.adversaries import Pool, SimNode
from tests.integration.conftest import BATCH, Assets, node_args
from tests.integration.test_verification import _price

pytestmark = pytest.mark.integration
SHARED = pytest.mark.xdist_group("malicious_submitters")  # share one module grid per worker (see make_module_grid)


@pytest.fixture(scope="module")
def module_grid(make_module_grid: Callable[..., LocalGrid]) -> LocalGrid:
    g = make_module_grid("--check-wait-ms", "60000")
    g.start_coordinator()
    return g


@pytest.fixture
def grid(module_grid: LocalGrid) -> LocalGrid:
    """One coordinator, no daemons, for the tests that bring their own simulated nodes (stopped
    when they end) and check only their own jobs and nodes. A minute's wait for a check's second
    opinion changes nothing at intake, where the first test's programs are refused."""
    module_grid.check_running()
    return module_grid


class Centred(torch.nn.Module):
    """y - y.mean(0): each row's output depends on the rest of its batch."""

    def __init__(self, above: int = 0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(16, 8)
        self.above = above  # centre only batches larger than this (0: always)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        on = min(max(x.shape[0] - self.above, 0), 1)
        return y - y.mean(0) * on


class Noisy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        return y + torch.rand_like(y)


def _program(tmp: Path, name: str, module: torch.nn.Module) -> Path:
    path = tmp / f"{name}.pt2"
    export_program(module.eval(), (torch.randn(4, 16),), path)
    return path


def _inputs(tmp: Path, rows: int) -> Path:
    path = tmp / f"x{rows}.safetensors"
    save_tensors({"x": torch.randn(rows, 16, generator=torch.Generator().manual_seed(3))}, path)
    return path


@SHARED
def test_row_dependent_and_random_programs_are_refused_at_intake(grid: LocalGrid, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path, 600)
    with Client(grid.target, Signer.generate()) as client:
        for name, module in (("centred", Centred()), ("noisy", Noisy())):
            with pytest.raises(Exception, match="not verifiable|random") as refused:
                client.submit_inference(_program(tmp_path, name, module), inputs, shard_rows=200, device="cpu")
            assert "only on its own input row" in str(refused.value) or "random" in str(refused.value)
        assert client.jobs() == []  # nothing was queued for any node


def test_a_program_dependent_only_in_big_batches_blames_no_honest_node(
    make_grid: Callable[..., LocalGrid], tmp_path: Path
) -> None:
    grid = make_grid("--check-wait-ms", "60000")
    grid.start_coordinator()
    for i in (1, 2):
        grid.start_node(f"node{i}", *node_args(i))
    program = _program(tmp_path, "sneaky", Centred(above=300))  # the intake probe runs <= 256 rows
    with Client(grid.target, Signer.generate()) as client:
        job = client.submit_inference(program, _inputs(tmp_path, 2000), shard_rows=500, batch_size=0, device="cpu")
        _price(grid, job.job_id, job.tasks_total)
        final = client.wait(job.job_id)
        nodes = client.nodes()
        kinds = [e.kind for e in client.watch(job.job_id)]
    assert final.state == JobState.FAILED and "not verifiable" in final.error, final.error
    assert "caught" not in kinds
    assert nodes and all(n.caught == 0 and n.slashed_wei == 0 for n in nodes)


@SHARED
def test_a_sybil_farming_trust_on_its_own_unpaid_jobs_is_still_caught(
    grid: LocalGrid, digits: Assets, tmp_path: Path
) -> None:
    work = tmp_path / "sim"
    work.mkdir()
    pool = Pool()
    sybil = SimNode(grid.target, "honest", pool, work)
    honest = [SimNode(grid.target, "honest", pool, work) for _ in range(2)]
    policy = VerificationSpec(spot_rows=100, canary_rate=0.0, trust_after=3)
    with Client(grid.target, Signer.generate()) as own, Client(grid.target, Signer.generate()) as victim:

        async def run_job(client: Client, paid: bool) -> str:
            job = client.submit_inference(
                digits.model, digits.inputs, shard_rows=250, batch_size=BATCH, device="cpu", verification=policy
            )
            if paid:
                _price(grid, job.job_id, job.tasks_total)
            deadline = time.monotonic() + 120
            while client.job(job.job_id).state in (JobState.QUEUED, JobState.RUNNING):
                assert time.monotonic() < deadline, "the job did not finish"
                await asyncio.sleep(0.3)
            return job.job_id

        async def scenario() -> tuple[str, str]:
            stop = asyncio.Event()
            runs = [asyncio.create_task(n.run(stop)) for n in (sybil, *honest)]
            farmed = await run_job(own, paid=False)  # the Sybil's own free job: many verified results
            sybil.behaviour = "zeros"  # now it cheats on a paying stranger's job
            target = await run_job(victim, paid=True)
            stop.set()
            errors = [e for e in await asyncio.gather(*runs, return_exceptions=True) if e is not None]
            assert not errors, errors
            return farmed, target

        farmed, target = asyncio.run(scenario())
        assert own.job(farmed).state == JobState.SUCCEEDED
        assert victim.job(target).state == JobState.SUCCEEDED
        record = {n.address.lower(): n for n in victim.nodes()}
    assert sybil.submitted >= 2
    assert record[sybil.address.lower()].caught >= 1, "the Sybil cheated unchecked"
    assert all(record[n.address.lower()].caught == 0 for n in honest)


@SHARED
def test_checks_cannot_be_told_from_tasks_by_id_order_or_input_hash(
    grid: LocalGrid, digits: Assets, tmp_path: Path
) -> None:
    """A node that cheats only on what looks like a job's shard, honest on anything that looks
    like a check, is still caught (its own results are what get checked); and nothing a lease
    shows separates checks from tasks: no derivable id, canaries on a never-seen input."""
    work = tmp_path / "sim"
    work.mkdir()
    pool = Pool()
    sly = SimNode(grid.target, "shapeaware", pool, work)
    honest = [SimNode(grid.target, "honest", pool, work) for _ in range(3)]
    policy = VerificationSpec(spot_rows=50, canary_rate=1.0)
    with Client(grid.target, Signer.generate()) as client:

        async def scenario() -> str:
            stop = asyncio.Event()
            runs = [asyncio.create_task(n.run(stop)) for n in (sly, *honest)]
            job = client.submit_inference(
                digits.model, digits.inputs, shard_rows=500, batch_size=BATCH, device="cpu", verification=policy
            )
            _price(grid, job.job_id, job.tasks_total)
            deadline = time.monotonic() + 150
            while client.job(job.job_id).state in (JobState.QUEUED, JobState.RUNNING):
                assert time.monotonic() < deadline, "the job did not finish"
                await asyncio.sleep(0.3)
            stop.set()
            errors = [e for e in await asyncio.gather(*runs, return_exceptions=True) if e is not None]
            assert not errors, errors
            return job.job_id

        job_id = asyncio.run(scenario())
        final = client.job(job_id)
        record = {n.address.lower(): n for n in client.nodes()}
    assert final.state == JobState.SUCCEEDED, final.error
    assert record[sly.address.lower()].caught >= 1, "a shape-aware cheater escaped"
    assert all(record[n.address.lower()].caught == 0 for n in honest)
    leases = [lease for n in (sly, *honest) for lease in n.leases]
    derivable = {task_id_for(job_id, i) for i in range(final.tasks_total + 100)}
    assert leases and not any(lease.task_id in derivable for lease in leases)  # ids say nothing
    engine = create_engine(f"sqlite:///{grid.root / 'coordinator' / 'coordinator.db'}")
    with engine.connect() as conn:
        t, c = s.tasks, s.checks
        shards = {r.input_sha for r in conn.execute(select(t.c.input_sha).where(t.c.kind == "inference"))}
        canaries = conn.execute(
            select(t.c.input_sha, t.c.rows).join(c, c.c.check_id == t.c.task_id).where(c.c.kind == "canary")
        ).all()
    engine.dispose()
    assert canaries, "no canary ran"  # this job's: the grid's other jobs ran with no canaries
    assert all(r.input_sha not in shards and r.rows == 500 for r in canaries)  # full size, never-seen hash
