"""Honest nodes running a TRAINING task whose program needs more than the task's memory limit are
paid by their draws and not blamed, with real processes throughout: a devnet (anvil, the contracts,
a coordinator and its referee) and two REAL node daemons, as test_memory_limits.py shows for inference.

The train program holds 2 GiB a step (test_memory_training.Hungry). It is submitted with a limit of
3 GiB, so intake's measured first step (kinds/training/vetting.py) passes it, and the task's limit is
then lowered to 1 GiB in the coordinator's database before any node starts: the stand-in, as in
test_memory_training.py, for a program whose memory depends on its shard or step, which intake's one
step cannot see (an accepted program cannot say so itself: its graph has no data-dependent shapes).

Each node's worker meets the limit and its daemon reports OUT_OF_MEMORY (node/supervision.py), a claim
(repositories.limit_claims, "Over its memory limit"); the second sends the task to the referee, whose
measured first part passes 1.25x the limit: the task ends (job event `ended`), its round has no other
task, so the job fails naming the memory limit; each claimant drew once (its run passed the limit at
inner step 0: nothing to win) and was paid what it won, and neither is held a failure."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from coordinator.db import schema
from tensorgrid.crypto import Signer, write_key_file
from tensorgrid.devnet import ChainGrid
from tensorgrid.types import JobState
from tensorgrid.workloads.model import export_program
from tests.datasets import save_digits
from tests.integration.conftest import Stopper, stopper, wait_for  # noqa: F401  (fixtures)
from tests.security.conftest import start_devnet
from tests.security.test_memory_training import Hungry
from tests.security.test_program_errors import client_of, paid_their_draws

pytestmark = pytest.mark.integration
REWARD = 10**15
LIMIT = 1 << 30  # the task's, once lowered: a step holds 2 GiB, past 1.25x it
SUBMITTED = 3 << 30  # intake's: its measured first step (2 GiB and the child's baseline) is within it
NODES = 2


@pytest.fixture
def devnet(tmp_path: Path, stopper: Stopper) -> Iterator[ChainGrid]:  # noqa: F811
    yield from start_devnet(tmp_path, stopper, 0)  # its nodes start once the task's limit is lowered


def start_nodes(devnet: ChainGrid) -> list[str]:
    """NODES real node daemons (CPU, one thread), staked as start_chain_grid stakes its own; their addresses."""
    keys = devnet.anvil.keys[2 : 2 + NODES]
    for i, key in enumerate(keys):
        devnet.grid.start_node(f"node{i}", *devnet.chain_args, "--device", "cpu", "--threads", "1", private_key=key)
    return [Signer.from_hex(key).address for key in keys]


def status(devnet: ChainGrid, tmp_path: Path, job_id: str) -> str:
    key = write_key_file(tmp_path / "submitter.key", Signer.from_hex(devnet.submitter_key))
    connection = ("--coordinator", devnet.grid.target, "--key", str(key), *devnet.chain_args)
    proc = subprocess.run(
        [sys.executable, "-m", "tensorgrid.cli", "job", "status", *connection, job_id],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def lower_limit(devnet: ChainGrid, job_id: str) -> None:
    engine = sa.create_engine(f"sqlite:///{devnet.grid.root / 'coordinator' / 'coordinator.db'}")
    try:
        with engine.begin() as conn:
            lowered = conn.execute(
                schema.tasks.update().where(schema.tasks.c.job_id == job_id).values(memory_limit_bytes=LIMIT)
            )
            assert lowered.rowcount == 1
    finally:
        engine.dispose()


@pytest.mark.timeout(400)  # anvil, the contracts, the coordinator, two nodes and the referee's children start
def test_honest_nodes_training_a_program_over_its_memory_limit_are_paid_and_not_blamed(
    devnet: ChainGrid, tmp_path: Path
) -> None:
    program, dataset = tmp_path / "train.pt2", tmp_path / "digits.safetensors"
    save_digits(dataset)
    torch.manual_seed(0)
    export_program(Hungry().train(), (torch.randn(8, 64),), program)
    with client_of(devnet) as client:
        job_id = client.submit_training(
            program, dataset, rounds=1, workers_per_round=1, inner_steps=4, batch_size=8, device="cpu",
            max_attempts=3, reward_per_task_wei=REWARD, task_memory_limit_bytes=SUBMITTED,
        ).job_id  # fmt: skip
        lower_limit(devnet, job_id)
        devnet = dataclasses.replace(devnet, node_keys=devnet.anvil.keys[2 : 2 + NODES])
        nodes = start_nodes(devnet)
        final = client.wait(job_id)
        assert final.state == JobState.FAILED, final
        assert "its program needs more than its memory limit of 1024 MiB" in final.error, final.error
        events = list(client.watch(job_id))
        failures = [e for e in events if e.kind in ("reissued", "contested")]
        assert [e.kind for e in failures] == ["reissued", "contested"], failures  # two runs: no third
        assert failures[0].message.startswith("unconfirmed out_of_memory"), failures
        assert "memory limit of 1024 MiB" in failures[0].message, failures  # the real daemon names the limit
        assert {e.node.lower() for e in failures} == {n.lower() for n in nodes}, failures  # both real nodes
        [ended] = [e.message for e in events if e.kind == "ended"]
        assert "its program needs more than its memory limit of 1024 MiB" in ended, ended
        assert "after inner step 0" in ended, ended
        [drawn] = [e.message for e in events if e.kind == "claims_paid" and "units of work" in e.message]
        assert "failed after 0 of its 4 units of work" in drawn, drawn  # its first step passed the limit
        paid_their_draws(client, job_id, nodes, drawn, REWARD)
    said = status(devnet, tmp_path, job_id)  # what `tensorgrid job status` shows its submitter
    assert "0/1 done, 1 ended without a result" in said, said
    assert "error    round 0: every one of its tasks failed for good; the last: task 0 failed for good" in said, said
    assert "task 0 ended: task 0 failed for good" in said, said  # among its events
