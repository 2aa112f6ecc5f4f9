"""A hostile submitter cannot make honest nodes run its failing program for free: a real devnet
(anvil, the contracts, a coordinator and its sandboxed referee) and two REAL node daemons (CPU).
The job's program looks its input's ids up in a table, and the last row of its one shard holds
an id past the table: every run of the task raises IndexError on its last batch, inside the
submitter's graph. Each node reports that as the program's error (ErrorKind.PROGRAM_ERROR), a
workload claim (repositories.claims); the second sends the task to the referee, whose run raises
on the same batch: the task ends at once (no third node runs it), the job fails naming the task
and the referee's error, each claimant drew one reward with probability (rows before the failing
batch ÷ the task's) and was paid what it won from the escrow, and neither is held a failure.
On a grid with ONE node, that node's second claim (it is leased the task again once the avoid
window, --avoid-failed-node-ms, has passed) sends the task to the referee just the same.

On main the node daemon reported the raise as its own execution error: each run spent one of
the task's attempts as that node's failure (counted, backed off), nothing was reviewed or paid,
and the job failed once its attempts were spent, on whichever nodes took it. Before one node's
second claim was reviewed, a lone node's claims never counted: the task went back to it after
every avoid window, without end."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tensorgrid.chain.client import ChainClient, JobStatus
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.devnet import ChainGrid
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import JobEvent, JobState
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.integration.conftest import Stopper, stopper, wait_for  # noqa: F401  (fixtures)
from tests.security.conftest import start_devnet
from tests.security.test_claim_pay import _Lookup

pytestmark = pytest.mark.integration
REWARD = 10**15
ROWS, BATCH, IDS = 256, 2, 16  # the run fails after 254 of 256 rows
AVOID_MS = 1_000  # --avoid-failed-node-ms of the one-node grid


@pytest.fixture
def devnet(tmp_path: Path, stopper: Stopper) -> Iterator[ChainGrid]:  # noqa: F811
    yield from start_devnet(tmp_path, stopper, 2)


@pytest.fixture
def one_node(tmp_path: Path, stopper: Stopper) -> Iterator[ChainGrid]:  # noqa: F811
    # its one node gets the task back a second after its claim, not 30 s (its backoff is shorter)
    yield from start_devnet(tmp_path, stopper, 1, "--avoid-failed-node-ms", str(AVOID_MS))


def submit_failing(devnet: ChainGrid, tmp_path: Path, client: Client) -> str:
    """The job whose one shard's program raises IndexError on its last batch: its id.

    Without canaries: a canary of the shard (drawn at canary_rate, 0.5% by default, for each of
    its leases to a new node, and leased at once to the other node) runs the same program and
    fails as well, adding its own failures to the events, records and claims these tests count
    exactly (about 1 run in 100 with two leases)."""
    model, inputs = tmp_path / "lookup.pt2", tmp_path / "ids.safetensors"
    export_program(_Lookup().eval(), (torch.zeros(BATCH, 3, dtype=torch.long),), model)
    ids = torch.randint(0, IDS, (ROWS, 3))
    ids[-1, 0] = IDS + 5  # the last row's id is past the table
    save_tensors({"ids": ids}, inputs)
    return client.submit_inference(
        model,
        inputs,
        shard_rows=ROWS,
        batch_size=BATCH,
        device="cpu",
        max_attempts=3,
        reward_per_task_wei=REWARD,
        verification=VerificationSpec(canary_rate=0.0),
    ).job_id


def client_of(devnet: ChainGrid) -> Client:
    signer = Signer.from_hex(devnet.submitter_key)
    chain = ChainClient.connect(devnet.anvil.rpc_url, devnet.deployment, signer.private_key)
    return Client(devnet.grid.target, signer, chain=chain)


def paid_their_draws(client: Client, job_id: str, nodes: list[str], drawn: str, reward: int) -> int:
    """Each claimant drew once and earned exactly what its draw says, the escrow was charged the
    wins and nothing more, and neither claimant is held a failure or a rejection (the refusal each
    claim cost is taken back). Returns what the escrow was charged."""
    winners = set()
    for address in nodes:
        [said] = re.findall(f"{address} won (one reward|nothing)", drawn, re.IGNORECASE)
        if said == "one reward":
            winners.add(address)
        assert client.earnings(address).cumulative_wei == (reward if said == "one reward" else 0), drawn
    escrow = wait_for(lambda: (e := client.escrow(job_id)).status == JobStatus.CANCELLED and e, 120, "release")
    assert escrow.charged == reward * len(winners)  # the wins, from the escrow, the rest refunded
    held = {n.address.lower(): n for n in client.nodes()}
    for address in nodes:
        record = held[address.lower()]
        assert (record.failures, record.rejections) == (0, 0), record
    return int(escrow.charged)


def failed_at_the_verdict(client: Client, job_id: str) -> list[JobEvent]:
    """The job failed with the referee's error; its events."""
    final = client.wait(job_id)
    assert final.state == JobState.FAILED, final
    assert final.error.startswith("task 0 failed for good: claims confirmed"), final.error
    assert "program_error" in final.error and "IndexError" in final.error, final.error  # the referee's error
    return list(client.watch(job_id))


@pytest.mark.timeout(400)  # anvil, the contracts, the coordinator, two nodes and the referee's child start
def test_honest_nodes_running_a_program_that_raises_on_its_last_batch_are_paid_and_not_blamed(
    devnet: ChainGrid, tmp_path: Path
) -> None:
    nodes = [Signer.from_hex(key).address for key in devnet.node_keys]
    with client_of(devnet) as client:
        job_id = submit_failing(devnet, tmp_path, client)
        budget = client.escrow(job_id).budget
        events = failed_at_the_verdict(client, job_id)
        failures = [e for e in events if e.kind in ("reissued", "contested")]
        assert [e.kind for e in failures] == ["reissued", "contested"], failures  # two claims: no third run
        assert failures[0].message.startswith("unconfirmed program_error"), failures
        assert {e.node.lower() for e in failures} == {n.lower() for n in nodes}, failures  # both real nodes
        [drawn] = [e.message for e in events if e.kind == "claims_paid" and "units of work" in e.message]
        assert f"failed after {ROWS - BATCH} of its {ROWS} units of work" in drawn, drawn  # the last batch
        assert paid_their_draws(client, job_id, nodes, drawn, REWARD) <= budget


@pytest.mark.timeout(400)  # anvil, the contracts, the coordinator, one node and the referee's child start
def test_a_lone_node_running_a_program_that_raises_is_reviewed_after_its_second_claim_and_the_job_fails(
    one_node: ChainGrid, tmp_path: Path
) -> None:
    """Before: its one node's claims never counted, the task leased back to it after every avoid
    window, run and refused each time, unpaid, until the job's deadline."""
    [address] = [Signer.from_hex(key).address for key in one_node.node_keys]
    with client_of(one_node) as client:
        job_id = submit_failing(one_node, tmp_path, client)
        started = time.monotonic()
        events = failed_at_the_verdict(client, job_id)
        assert time.monotonic() - started < 300  # bounded: two runs and one review, not the deadline
        failures = [e for e in events if e.kind in ("reissued", "contested")]
        assert [e.kind for e in failures] == ["reissued", "contested"], failures  # two claims, then the referee
        assert {e.node.lower() for e in failures} == {address.lower()}, failures
        assert failures[1].message.startswith("program_error claimed again by the same node"), failures
        [drawn] = [e.message for e in events if e.kind == "claims_paid" and "units of work" in e.message]
        assert f"failed after {ROWS - BATCH} of its {ROWS} units of work" in drawn, drawn
        [said] = re.findall(f"{address} won (one reward|nothing)", drawn, re.IGNORECASE)
        assert client.earnings(address).cumulative_wei == (REWARD if said == "one reward" else 0), drawn
        record = {n.address.lower(): n for n in client.nodes()}[address.lower()]
        assert (record.failures, record.rejections) == (0, 0), record  # its refusal taken back
