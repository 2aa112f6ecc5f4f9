"""The verification ladder on a real grid: cheaters are caught and unpaid, honest nodes never are."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, func, select

from coordinator.db import schema as s
from coordinator.repositories.ledger.credits import set_job_price
from coordinator.repositories.ledger.escrow import lock_key
from tensorgrid.chain.client import ChainClient
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.devnet import start_chain_grid
from tensorgrid.errors import TensorGridError
from tensorgrid.localgrid import LocalGrid
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import JobState
from tensorgrid.workloads.tensorfile import load_tensors
from tests.integration.adversaries import BEHAVIOURS, Pool, SimNode
from tests.integration.conftest import BATCH, FAST, PAIR, Assets, node_args

pytestmark = pytest.mark.integration
REWARD = 1000


def _credits(grid: LocalGrid, checks: bool = False) -> dict[str, int]:
    """Credits per node: of the job's tasks, or (checks) the checkers' wins from the verification fee."""
    engine = create_engine(f"sqlite:///{grid.root / 'coordinator' / 'coordinator.db'}")
    of_checks = s.credits.c.task_id.in_(select(s.checks.c.check_id))
    with engine.connect() as conn:
        q = select(s.credits.c.node, func.count()).where(of_checks if checks else ~of_checks)
        rows = conn.execute(q.group_by(s.credits.c.node)).all()
    engine.dispose()
    return {r[0].lower(): int(r[1]) for r in rows}


def _price(grid: LocalGrid, job_id: str, tasks: int) -> None:
    """Price the job as an escrow would (this grid has no chain), so payment can be audited."""
    engine = create_engine(f"sqlite:///{grid.root / 'coordinator' / 'coordinator.db'}")
    set_job_price(engine, job_id, REWARD, REWARD * tasks * 10)
    engine.dispose()


def _confirm_lock(grid: LocalGrid, job_id: str) -> int:
    """Mark the job's queued escrow lock confirmed, as the chain listener would (no chain here)."""
    engine = create_engine(f"sqlite:///{grid.root / 'coordinator' / 'coordinator.db'}")
    with engine.begin() as conn:
        done = conn.execute(
            s.outbox.update().where(s.outbox.c.key == lock_key(job_id)).values(state="confirmed")
        ).rowcount
    engine.dispose()
    return int(done)


def test_adversaries_are_caught_and_unpaid(make_grid: Callable[..., LocalGrid], digits: Assets, tmp_path: Path) -> None:
    grid = make_grid("--check-wait-ms", "60000")
    grid.start_coordinator()
    policy = VerificationSpec(spot_rows=200, canary_rate=0.0)
    with Client(grid.target, Signer.generate()) as client:
        job = client.submit_inference(
            digits.model, digits.inputs, shard_rows=100, batch_size=BATCH, device="cpu", verification=policy
        )
        _price(grid, job.job_id, job.tasks_total)
        pool, work = Pool(), tmp_path / "sim"
        work.mkdir()
        adversaries = [SimNode(grid.target, b, pool, work) for b in BEHAVIOURS]
        honest = [SimNode(grid.target, "honest", pool, work) for _ in range(17)]  # with 2 daemons: 8 of 27 cheat

        async def scenario() -> None:
            stop = asyncio.Event()
            runs = [asyncio.create_task(n.run(stop)) for n in adversaries]
            await asyncio.sleep(1.0)  # cheaters get the first leases
            runs += [asyncio.create_task(n.run(stop)) for n in honest]
            for i in (1, 2):
                grid.start_node(f"daemon{i}", *node_args(i))
            deadline = time.monotonic() + 90
            while client.job(job.job_id).state in (JobState.QUEUED, JobState.RUNNING):
                assert time.monotonic() < deadline, "the job did not finish"
                await asyncio.sleep(0.3)
            stop.set()
            errors = [e for e in await asyncio.gather(*runs, return_exceptions=True) if e is not None]
            assert not errors, errors

        asyncio.run(scenario())
        final = client.job(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        with pytest.raises(TensorGridError, match="escrow is locked"):  # no free work before the lock
            client.result(job.job_id, tmp_path / "out.safetensors", release_wait_s=0)
        assert _confirm_lock(grid, job.job_id) == 1
        client.result(job.job_id, tmp_path / "out.safetensors")
        record = {n.address.lower(): n for n in client.nodes()}
        kinds = [e.kind for e in client.watch(job.job_id)]
    got, want = load_tensors(tmp_path / "out.safetensors")["output"], load_tensors(digits.expected)["output"]
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    paid = _credits(grid)
    assert sum(paid.values()) == final.tasks_total  # every task paid once, to whoever was verified
    assert final.verification is not None
    # Every node here is new, so every check was the referee's alone (no node ran one): the fee
    # paid no checker (test_verification_fee covers checkers' pay when trusted subjects are checked)
    assert sum(_credits(grid, checks=True).values()) * REWARD == final.verification.fee_paid_wei == 0
    for adv in adversaries:
        r = record[adv.address.lower()]
        assert adv.submitted >= 1, f"{adv.behaviour} never got a task"
        if adv.behaviour == "replay":
            # Its own accepted receipt again is refused but not counted (an honest node hands in a
            # kept copy when an answer is lost); the leases it sat on instead expired and were reissued.
            assert adv.accepted <= 1 and r.failures >= 1, f"replay was not caught: {adv.accepted} accepted, {r}"
        else:
            assert r.rejections + r.caught >= 1, f"{adv.behaviour} was not caught"
        honest_answers = 1 if adv.behaviour == "replay" else 0  # its first answer was honest work
        assert paid.get(adv.address.lower(), 0) <= honest_answers, f"{adv.behaviour} was paid for cheating"
    for n in honest:
        assert record[n.address.lower()].caught == 0
    assert "verified" in kinds


@PAIR
def test_honest_grid_never_rejects_across_threads_and_batches(pair_grid: LocalGrid, digits: Assets) -> None:
    grid = pair_grid  # nodes of one and two threads
    with Client(grid.target, Signer.generate()) as client:
        jobs = [
            client.submit_inference(digits.model, digits.inputs, shard_rows=500, batch_size=b, device="cpu")
            for b in (BATCH, 7, 0)
        ]
        for job in jobs:
            final = client.wait(job.job_id)
            assert final.state == JobState.SUCCEEDED, final.error
            kinds = [e.kind for e in client.watch(job.job_id)]
            assert "caught" not in kinds and "disputed" not in kinds and "reissued" not in kinds
            assert kinds.count("verified") >= 1
        nodes = client.nodes()
    assert len(nodes) == 2 and all(n.caught == 0 and n.rejections == 0 for n in nodes)
    assert sum(n.verified for n in nodes) >= 3


def test_a_caught_cheater_is_slashed_on_chain(digits: Assets, tmp_path: Path) -> None:
    """End to end on a devnet: a staked node returns zeros, a drawn checker disagrees, the
    coordinator's referee rules, and its outbox slashes the cheater with its own receipt."""
    devnet = start_chain_grid(tmp_path / "devnet", 2, epoch_s=1.0, coordinator_args=FAST)
    try:
        devnet.grid.wait_for_nodes(2)  # the honest daemons are up before the job (slow on a loaded machine)
        cheater_key = devnet.anvil.keys[-2]  # not a daemon's, the guardian's or the submitter's
        ChainClient.connect(devnet.anvil.rpc_url, devnet.deployment, cheater_key).register(10**18)
        submitter = Signer.from_hex(devnet.submitter_key)
        chain = ChainClient.connect(devnet.anvil.rpc_url, devnet.deployment, submitter.private_key)
        work = tmp_path / "sim"
        work.mkdir()
        cheater = SimNode(devnet.grid.target, "zeros", Pool(), work, signer=Signer.from_hex(cheater_key))
        stake_before = chain.stake_of(cheater.address)
        with Client(devnet.grid.target, submitter, chain=chain) as client:

            async def scenario() -> str:
                stop = asyncio.Event()
                run = asyncio.create_task(cheater.run(stop))
                await asyncio.sleep(1.0)  # registered and leasing before the job arrives
                job = client.submit_inference(
                    digits.model,
                    digits.inputs,
                    shard_rows=250,
                    batch_size=BATCH,
                    device="cpu",
                    reward_per_task_wei=10**12,
                )
                deadline = time.monotonic() + 90
                while client.job(job.job_id).state in (JobState.QUEUED, JobState.RUNNING):
                    assert time.monotonic() < deadline, "the job did not finish"
                    await asyncio.sleep(0.3)
                stop.set()
                await run
                return job.job_id

            job_id = asyncio.run(scenario())
            final = client.job(job_id)
            assert final.state == JobState.SUCCEEDED, final.error
            assert cheater.submitted >= 1
            deadline = time.monotonic() + 60
            while chain.stake_of(cheater.address) == stake_before:
                assert time.monotonic() < deadline, "the cheater was never slashed"
                time.sleep(0.3)

            # Each catch is one proposal (out of the stake at once); after the guardian's delay the
            # coordinator executes them all and the node's record shows every wei taken.
            def executed() -> object:
                record = {n.address.lower(): n for n in client.nodes()}[cheater.address.lower()]
                taken = stake_before - chain.stake_of(cheater.address)
                return record if record.slashed_wei == taken > 0 else None

            while not (record := executed()):
                assert time.monotonic() < deadline + 90, "the slashes were never executed"
                devnet.anvil.rpc("evm_mine")  # anvil mines on demand: chain time moves past the delay
                time.sleep(1.0)
            assert record.caught >= 1  # type: ignore[attr-defined]
            others = [n for n in client.nodes() if n.address.lower() != cheater.address.lower()]
            assert others and all(n.caught == 0 for n in others)  # the checkers were right: never punished
            client.result(job_id, tmp_path / "out.safetensors")
        got, want = load_tensors(tmp_path / "out.safetensors")["output"], load_tensors(digits.expected)["output"]
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    finally:
        devnet.stop()
