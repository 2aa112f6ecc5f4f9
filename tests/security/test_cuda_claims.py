"""Claims from CUDA runs against the real coordinator and its sandboxed CPU referee
(repositories.claim_devices): a CUDA node's program error is a claim the referee's CPU run can
confirm but not disprove.

The nodes here declare device_kind "cuda" over the node API, as any node may (it is the node's own
word; the real node daemon refuses --device cuda without a GPU, node/hardware.py, and this machine
has none, so they are simulated nodes: NodeClient). Their run is the node's inference path on CPU,
standing in for their GPU's: the raise is inside the submitter's graph either way.

- A program raising on the last batch of its shard on every device (a job that runs anywhere: on
  one that asks for CUDA the referee's CPU raise proves nothing): two staked CUDA nodes run it
  and report the program's error; the referee's run raises too, the job fails at the verdict and
  each claimant is paid by its draw from the escrow. On main each report was that node's own
  execution error: an attempt spent, never reviewed, never paid (the job failed "task 0 failed 2
  times", its nodes unpaid and each held a failure).
- Two colluding CUDA nodes lying that a good program raised, on a task with one attempt: the
  referee's clean CPU run leaves them undecided (not disproved: a program can raise on a GPU
  alone), the task goes to a node that never claimed, which finishes the job; each liar holds the
  one refusal its claim cost, nobody is paid. On main the first lie was that node's execution
  error and spent the task's one attempt: the job failed."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tensorgrid.chain.client import ChainClient, JobStatus
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.devnet import ChainGrid
from tensorgrid.errors import ExecutionError
from tensorgrid.nodeclient import NodeClient
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import Capabilities, ErrorKind, JobState, TaskError
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.integration.adversaries import Pool, SimNode
from tests.integration.conftest import FAST, Stopper, make_grid, stopper, wait_for  # noqa: F401  (fixtures)
from tests.security.conftest import start_devnet
from tests.security.test_claim_pay import BATCH, lookup_files, run_and_claim
from tests.security.test_peer_bounds import START_S, SUBMITTER, Grids, records

pytestmark = pytest.mark.integration
REWARD = 10**15
ROWS = 256  # the run fails after 254 of 256 rows: each claimant wins with p = 0.992
GPU = Capabilities(device_kind="cuda", memory_bytes=16 << 30, cpu_cores=2)


@pytest.fixture
def devnet(tmp_path: Path, stopper: Stopper) -> Iterator[ChainGrid]:  # noqa: F811
    yield from start_devnet(tmp_path, stopper, 0)


def program_error(failed: ExecutionError) -> TaskError:
    """What a node declaring CUDA reports of the raise: the program's error."""
    assert failed.kind == ErrorKind.PROGRAM_ERROR.value
    return TaskError(ErrorKind.PROGRAM_ERROR, str(failed))


@pytest.mark.timeout(400)  # anvil, the contracts, the coordinator and its referee's child on a loaded machine
def test_cuda_nodes_running_a_program_that_raises_on_every_device_are_paid_and_not_blamed(
    devnet: ChainGrid, tmp_path: Path
) -> None:
    model, inputs = files = lookup_files(tmp_path, ROWS)
    signer = Signer.from_hex(devnet.submitter_key)
    chain = ChainClient.connect(devnet.anvil.rpc_url, devnet.deployment, signer.private_key)
    with Client(devnet.grid.target, signer, chain=chain) as client:
        job_id = client.submit_inference(
            model, inputs, shard_rows=ROWS, batch_size=BATCH, device="any", max_attempts=2,
            reward_per_task_wei=REWARD, verification=VerificationSpec(canary_rate=0.0),
        ).job_id  # fmt: skip
        budget = client.escrow(job_id).budget
        keys = devnet.anvil.keys[2:4]  # accounts no devnet node uses

        async def both() -> list[str]:
            return [await run_and_claim(devnet, key, files, tmp_path, GPU, program_error) for key in keys]

        claimants = asyncio.run(both())
        final = client.wait(job_id)
        assert final.state == JobState.FAILED, final
        assert final.error.startswith("task 0 failed for good: claims confirmed"), final.error
        assert "program_error" in final.error and "IndexError" in final.error, final.error  # the referee's own
        events = list(client.watch(job_id))
        [drawn] = [e.message for e in events if e.kind == "claims_paid" and "units of work" in e.message]
        assert f"failed after {ROWS - BATCH} of its {ROWS} units of work" in drawn, drawn
        winners = {a for a in claimants if re.search(f"{a} won one reward", drawn, re.IGNORECASE)}
        assert winners, drawn  # each wins with probability 254/256: none does once in 16,000 runs
        for address in claimants:
            assert client.earnings(address).cumulative_wei == (REWARD if address in winners else 0), drawn
        escrow = wait_for(lambda: (e := client.escrow(job_id)).status == JobStatus.CANCELLED and e, 120, "release")
        assert escrow.charged == REWARD * len(winners) <= budget
        held = {n.address.lower(): n for n in client.nodes()}
        for address in claimants:
            record = held[address.lower()]
            assert (record.failures, record.rejections) == (0, 0), record  # their refusals taken back


@pytest.mark.timeout(300)  # the coordinator and its referee's child start (torch imports) on a loaded machine
def test_two_cuda_nodes_lying_that_a_good_program_raised_cannot_fail_the_job(
    make_grid: Grids,  # noqa: F811
    tmp_path: Path,
) -> None:
    grid = make_grid()
    grid.start_coordinator(timeout=START_S)
    model, inputs = tmp_path / "linear.pt2", tmp_path / "rows.safetensors"
    torch.manual_seed(0)
    export_program(torch.nn.Linear(8, 4).eval(), (torch.rand(4, 8),), model)
    save_tensors({"x": torch.rand(8, 8)}, inputs)
    with Client(grid.target, SUBMITTER) as client:
        job_id = client.submit_inference(
            model, inputs, shard_rows=8, batch_size=4, device="any", max_attempts=1,  # one believed claim fails it
            verification=VerificationSpec(mode="none"),
        ).job_id  # fmt: skip
    lie = TaskError(
        ErrorKind.PROGRAM_ERROR, "the model failed: RuntimeError: CUDA error: an illegal memory access (a lie)"
    )
    honest = SimNode(grid.target, "honest", Pool(), tmp_path)

    async def scenario() -> list[str]:
        liars = [NodeClient(grid.target, Signer.generate()) for _ in range(2)]
        try:
            for liar in liars:
                await liar.register(GPU)
                (lease,), _ = await liar.lease(1, wait_ms=5000)
                assert await liar.report(lease.task_id, lease.attempt, lie) is True  # reissued, or to the referee
            stop = asyncio.Event()
            run = asyncio.create_task(honest.run(stop))  # a CPU node that never claimed
            try:
                with Client(grid.target, SUBMITTER) as client:
                    job = await asyncio.to_thread(client.wait, job_id)
            finally:
                stop.set()
                await run
            assert job.state == JobState.SUCCEEDED, job.error
            return [liar.signer.address for liar in liars]
        finally:
            for liar in liars:
                await liar.close()

    liars = asyncio.run(scenario())
    with Client(grid.target, SUBMITTER) as client:
        events = list(client.watch(job_id))
    kinds = [e.kind for e in events]
    assert kinds.count("contested") == 1 and kinds.count("undecided") == 1, kinds
    [said] = [e.message for e in events if e.kind == "undecided"]
    assert "claims undecided for 2 claimants that ran it on another device class than the referee's (cpu)" in said
    assert not any("claims confirmed" in e.message or e.kind == "claims_paid" for e in events), events
    [disproved] = [e for e in events if e.kind == "disproved"]
    assert disproved.message.startswith("2 claimants' claims disproved by a non-claimant's result"), disproved
    record = records(grid)
    assert [record[n].rejections for n in liars] == [1, 1]  # type: ignore[attr-defined]
    assert record[honest.signer.address].completed == 1  # type: ignore[attr-defined]
