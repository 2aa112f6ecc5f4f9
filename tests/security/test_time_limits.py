"""A hostile submitter cannot have honest nodes run a program too slow for its task's time limit
for free, nor have them blamed for it: a real devnet (anvil, the contracts, a coordinator and its
sandboxed referee) and two REAL node daemons (CPU, one thread each). The job's program is honestly
slow (SLOW_STEPS matmuls of 1024×1024): its one shard, one batch, takes several times its time
limit of LIMIT_S on this machine. Intake's estimate passes it (its probe runs 256 of the 2000 rows:
a lower bound within the limit). Each node's run hits the limit, and its timeout is a claim that
the program is too slow (repositories.limit_claims, "Over its time limit"); the second sends the task to
the referee, whose run takes at least 1.25× the limit (its CPU time over its threads, ~2× here):
the job fails naming the time limit after two node runs and one review, each node drew one reward
with probability (rows the limit's time reaches at the referee's pace ÷ the task's) and was paid
what it won, and neither is held a failure.

On main each timeout was its node's own failure: an attempt spent, a failure and its backoff,
nothing paid, and the job failed only once its attempts were spent (max_attempts runs of the
limit, each a node's for nothing)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tensorgrid.crypto import Signer
from tensorgrid.devnet import ChainGrid
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import JobState
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.integration.conftest import Stopper, stopper, wait_for  # noqa: F401  (fixtures)
from tests.security.conftest import start_devnet
from tests.security.test_program_errors import client_of, paid_their_draws

pytestmark = pytest.mark.integration
REWARD = 10**15
ROWS, WIDTH = 2000, 1024
SLOW_STEPS = 300  # ~18 µs of CPU a row and step here: ~10 s the shard on one thread, ~5 s on two
LIMIT_S = 2


class _Slow(torch.nn.Module):
    """A program honestly too slow for its limit: the same matmul SLOW_STEPS times (no trick)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(WIDTH, WIDTH) / WIDTH**0.5, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(SLOW_STEPS):
            x = torch.tanh(x @ self.weight)
        return x


@pytest.fixture
def devnet(tmp_path: Path, stopper: Stopper) -> Iterator[ChainGrid]:  # noqa: F811
    yield from start_devnet(tmp_path, stopper, 2)


@pytest.mark.timeout(400)  # anvil, the contracts, the coordinator, two nodes and the referee's child start
def test_honest_nodes_running_a_program_too_slow_for_its_limit_are_paid_and_not_blamed(
    devnet: ChainGrid, tmp_path: Path
) -> None:
    nodes = [Signer.from_hex(key).address for key in devnet.node_keys]
    model, inputs = tmp_path / "slow.pt2", tmp_path / "x.safetensors"
    export_program(_Slow().eval(), (torch.zeros(4, WIDTH),), model)
    save_tensors({"x": torch.randn(ROWS, WIDTH)}, inputs)
    with client_of(devnet) as client:
        job_id = client.submit_inference(
            model, inputs, shard_rows=ROWS, batch_size=0, device="cpu", max_attempts=3,
            reward_per_task_wei=REWARD, task_time_limit_s=LIMIT_S,
            # no canary: one of the shard (0.5% a lease, leased at once to the other node) runs and fails
            # too, adding its failures to the events and records counted exactly below (~1 run in 100)
            verification=VerificationSpec(canary_rate=0.0),
        ).job_id  # fmt: skip
        started = time.monotonic()
        final = client.wait(job_id)
        assert final.state == JobState.FAILED, final
        assert final.error.startswith("task 0 failed for good: claims confirmed"), final.error
        assert f"timeout: its program needs more than its time limit of {LIMIT_S}s" in final.error, final.error
        assert time.monotonic() - started < 200  # two runs of the limit and one review
        events = list(client.watch(job_id))
        failures = [e for e in events if e.kind in ("reissued", "contested")]
        assert [e.kind for e in failures] == ["reissued", "contested"], failures  # two runs: no third
        assert failures[0].message.startswith("unconfirmed timeout"), failures
        assert {e.node.lower() for e in failures} == {n.lower() for n in nodes}, failures  # both real nodes
        [drawn] = [e.message for e in events if e.kind == "claims_paid" and "units of work" in e.message]
        done = int(re.findall(r"failed after (\d+) of its", drawn)[0])
        assert 0 < done < ROWS and f"of its {ROWS} units of work" in drawn, drawn  # what the limit's time reaches
        paid_their_draws(client, job_id, nodes, drawn, REWARD)
