"""A submitter cannot have honest nodes burn compute for free with an input that fails late: a
real devnet (anvil, the contracts, a coordinator and its sandboxed referee). The job's program
looks its input's ids up in a table, and the last row of its one shard holds an id past the
table: every run of the task raises on its last batch. Two staked nodes run it, see it fail and
claim its input invalid (simulated nodes making invalid-input claims; real node daemons report
the raise as the program's error: tests/security/test_program_errors.py); the referee runs it
too, its run fails on the same batch, which confirms the claims (the job fails at the verdict)
and finds how far the run got (bisection) — and each claimant wins one reward with probability
(rows before the failing batch ÷ the task's rows), credited from the job's escrow
(repositories/ledger/claim_pay.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tensorgrid.chain.client import ChainClient, JobStatus
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.devnet import ETH, ChainGrid
from tensorgrid.errors import ExecutionError
from tensorgrid.nodeclient import NodeClient
from tensorgrid.report import format_eth, verification_line
from tensorgrid.types import Capabilities, ErrorKind, JobState, TaskError
from tensorgrid.workloads.inference import run_inference
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.integration.conftest import Stopper, stopper, wait_for  # noqa: F401  (fixtures)
from tests.security.conftest import start_devnet

pytestmark = pytest.mark.integration
REWARD = 10**15
ROWS, BATCH, IDS = 1024, 2, 16  # the run fails after 1022 of 1024 rows: each claimant wins with p = 0.998
CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)


class _Lookup(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(IDS, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids).sum(dim=1)


@pytest.fixture
def devnet(tmp_path: Path, stopper: Stopper) -> Iterator[ChainGrid]:  # noqa: F811
    yield from start_devnet(tmp_path, stopper, 0)


def lookup_files(tmp: Path, rows: int) -> tuple[Path, Path]:
    """The job's program (a table lookup) and its input of `rows` rows, the last of which holds an id
    past the table: every run raises on its last batch."""
    model, inputs = tmp / "lookup.pt2", tmp / "ids.safetensors"
    export_program(_Lookup().eval(), (torch.zeros(BATCH, 3, dtype=torch.long),), model)
    ids = torch.randint(0, IDS, (rows, 3))
    ids[-1, 0] = IDS + 5  # the last row's id is past the table
    save_tensors({"ids": ids}, inputs)
    return model, inputs


def invalid_input(failed: ExecutionError) -> TaskError:
    return TaskError(ErrorKind.INVALID_INPUT, f"the program raised on the input: {failed}")


async def run_and_claim(
    cg: ChainGrid, key: str, files: tuple[Path, Path], tmp: Path,
    caps: Capabilities = CPU, claim: Callable[[ExecutionError], TaskError] = invalid_input,
) -> str:  # fmt: skip
    """A staked node (of `caps`) leases the task, runs it through the node's inference path, and, as
    the program raises on the input's last row, reports `claim` of that raise. Its address."""
    ChainClient.connect(cg.anvil.rpc_url, cg.deployment, key).register(ETH)
    node = NodeClient(cg.grid.target, Signer.from_hex(key))
    model, inputs = files
    try:
        await node.register(caps)
        (lease,), _ = await node.lease(1, wait_ms=30_000)
        with pytest.raises(ExecutionError) as failed:  # the submitter's files, the bytes the node fetched
            run_inference(model, inputs, tmp / f"{node.signer.address}.safetensors", batch_size=BATCH, device="cpu")
        assert await node.report(lease.task_id, lease.attempt, claim(failed.value)) is True  # reissued, or reviewed
        return node.signer.address
    finally:
        await node.close()


@pytest.mark.timeout(400)  # anvil, the contracts, the coordinator and its referee's child on a loaded machine
def test_honest_claimants_of_a_task_failing_on_its_last_batch_are_paid_from_the_escrow(
    devnet: ChainGrid, tmp_path: Path
) -> None:
    model, inputs = files = lookup_files(tmp_path, ROWS)
    signer = Signer.from_hex(devnet.submitter_key)
    chain = ChainClient.connect(devnet.anvil.rpc_url, devnet.deployment, signer.private_key)
    with Client(devnet.grid.target, signer, chain=chain) as client:
        job_id = client.submit_inference(
            model, inputs, shard_rows=ROWS, batch_size=BATCH, device="cpu", max_attempts=2,
            reward_per_task_wei=REWARD,
        ).job_id  # fmt: skip
        budget = client.escrow(job_id).budget
        keys = devnet.anvil.keys[2:4]  # accounts no devnet node uses

        async def both() -> list[str]:
            return [await run_and_claim(devnet, key, files, tmp_path) for key in keys]

        claimants = asyncio.run(both())
        final = client.wait(job_id)
        assert final.state == JobState.FAILED and "claims confirmed" in final.error, final.error
        events = list(client.watch(job_id))
        [drawn] = [e.message for e in events if e.kind == "claims_paid" and "units of work" in e.message]
        assert f"failed after {ROWS - BATCH} of its {ROWS} units of work" in drawn, drawn  # the last batch
        winners = {a for a in claimants if re.search(f"{a} won one reward", drawn, re.IGNORECASE)}
        assert winners, drawn  # each wins with probability 1022/1024: none does once in 250,000 runs
        for address in claimants:
            earned = client.earnings(address)
            assert earned.cumulative_wei == (REWARD if address in winners else 0), (address, drawn)
        # on chain: the failed job's escrow charged the wins (whole rewards), the rest refunded
        escrow = wait_for(lambda: (e := client.escrow(job_id)).status == JobStatus.CANCELLED and e, 120, "release")
        assert escrow.charged == REWARD * len(winners) <= budget
        report = client.job(job_id).verification  # what `tensorgrid job status` prints
        assert report is not None and (report.claims_drawn, report.claims_paid_wei) == (2, REWARD * len(winners))
        assert f"2 proven failure claims paid {format_eth(REWARD * len(winners))}" in verification_line(report)
