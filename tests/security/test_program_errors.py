"""A hostile submitter cannot make honest nodes run its failing program for free: a real devnet
(anvil, the contracts, a coordinator and its sandboxed referee) and two REAL node daemons (CPU).
The job's program looks its input's ids up in a table, and the last row of its one shard holds
an id past the table: every run of the task raises IndexError on its last batch, inside the
submitter's graph. Each node reports that as the program's error (ErrorKind.PROGRAM_ERROR), a
workload claim (repositories.claims); the second sends the task to the referee, whose run raises
on the same batch: the task ends at once (no third node runs it), the job fails naming the task
and the referee's error, each claimant drew one reward with probability (rows before the failing
batch ÷ the task's) and was paid what it won from the escrow, and neither is held a failure.

On main the node daemon reported the raise as its own execution error: each run spent one of
the task's attempts as that node's failure (counted, backed off), nothing was reviewed or paid,
and the job failed once its attempts were spent, on whichever nodes took it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tensorgrid.chain.client import ChainClient, JobStatus
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.devnet import ChainGrid, start_chain_grid
from tensorgrid.types import JobState
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.integration.conftest import FAST, Stopper, stopper, wait_for  # noqa: F401  (fixtures)
from tests.security.test_claim_pay import _Lookup

pytestmark = pytest.mark.integration
REWARD = 10**15
ROWS, BATCH, IDS = 256, 2, 16  # the run fails after 254 of 256 rows


@pytest.fixture
def devnet(tmp_path: Path, stopper: Stopper) -> Iterator[ChainGrid]:  # noqa: F811
    cg = start_chain_grid(tmp_path / "devnet", 2, epoch_s=1.0, challenge_window_s=1, coordinator_args=FAST)
    try:
        yield cg
    finally:
        stopper.stop(cg)


@pytest.mark.timeout(400)  # anvil, the contracts, the coordinator, two nodes and the referee's child start
def test_honest_nodes_running_a_program_that_raises_on_its_last_batch_are_paid_and_not_blamed(
    devnet: ChainGrid, tmp_path: Path
) -> None:
    model, inputs = tmp_path / "lookup.pt2", tmp_path / "ids.safetensors"
    export_program(_Lookup().eval(), (torch.zeros(BATCH, 3, dtype=torch.long),), model)
    ids = torch.randint(0, IDS, (ROWS, 3))
    ids[-1, 0] = IDS + 5  # the last row's id is past the table
    save_tensors({"ids": ids}, inputs)
    nodes = [Signer.from_hex(key).address for key in devnet.node_keys]
    signer = Signer.from_hex(devnet.submitter_key)
    chain = ChainClient.connect(devnet.anvil.rpc_url, devnet.deployment, signer.private_key)
    with Client(devnet.grid.target, signer, chain=chain) as client:
        job_id = client.submit_inference(
            model, inputs, shard_rows=ROWS, batch_size=BATCH, device="cpu", max_attempts=3,
            reward_per_task_wei=REWARD,
        ).job_id  # fmt: skip
        budget = client.escrow(job_id).budget
        final = client.wait(job_id)
        assert final.state == JobState.FAILED, final
        assert final.error.startswith("task 0 failed for good: claims confirmed"), final.error
        assert "program_error" in final.error and "IndexError" in final.error, final.error  # the referee's error
        events = list(client.watch(job_id))
        failures = [e for e in events if e.kind in ("reissued", "contested")]
        assert [e.kind for e in failures] == ["reissued", "contested"], failures  # two claims: no third run
        assert failures[0].message.startswith("unconfirmed program_error"), failures
        assert {e.node.lower() for e in failures} == {n.lower() for n in nodes}, failures  # both real nodes
        [drawn] = [e.message for e in events if e.kind == "claims_paid" and "units of work" in e.message]
        assert f"failed after {ROWS - BATCH} of its {ROWS} units of work" in drawn, drawn  # the last batch
        winners = set()
        for address in nodes:  # each drew once: paid exactly what its draw says
            [said] = re.findall(f"{address} won (one reward|nothing)", drawn, re.IGNORECASE)
            if said == "one reward":
                winners.add(address)
            assert client.earnings(address).cumulative_wei == (REWARD if said == "one reward" else 0), drawn
        escrow = wait_for(lambda: (e := client.escrow(job_id)).status == JobStatus.CANCELLED and e, 120, "release")
        assert escrow.charged == REWARD * len(winners) <= budget  # the wins, from the escrow, the rest refunded
        held = {n.address.lower(): n for n in client.nodes()}
        for address in nodes:  # the refusal each claim cost is taken back: neither is held a failure
            record = held[address.lower()]
            assert (record.failures, record.rejections) == (0, 0), record
