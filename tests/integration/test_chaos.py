"""Crashes at any moment lose nothing: on a devnet, five escrow-funded jobs run while their
coordinator is SIGKILLed five times (once between funding an escrow and submitting its job) and a
node once. Every job finishes, every task is charged once, every charged wei is claimed by the
nodes, the submitter got back the rest, and the contract ends owing nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tensorgrid.chain.client import ChainClient
from tensorgrid.client import Client, CoordinatorError, SubmitInterrupted
from tensorgrid.crypto import Signer
from tensorgrid.devnet import start_chain_grid
from tensorgrid.localgrid import COORDINATOR, LocalGrid, Proc
from tensorgrid.types import JobState
from tests.integration.conftest import BATCH, FAST, Assets, Stopper
from tests.integration.payments import settled_once

pytestmark = pytest.mark.integration
REWARD = 10**15
GAS_PER_JOB = 10**16  # far above what funding and refunding one escrow costs on anvil


def _proc(grid: LocalGrid, name: str) -> Proc:
    return next(p for p in grid.procs if p.name == name)


def _answers(client: Client) -> bool:
    try:
        client.nodes()
    except CoordinatorError:
        return False
    return True


def _wait(check: Any, what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(600)
def test_crashes_lose_no_wei_and_pay_nothing_twice(tmp_path: Path, slow_digits: Assets, stopper: Stopper) -> None:
    cg = start_chain_grid(tmp_path / "devnet", 2, epoch_s=1.0, challenge_window_s=1, coordinator_args=FAST)
    try:
        grid = cg.grid
        grid.wait_for_nodes(2)
        signer = Signer.from_hex(cg.submitter_key)
        chain = ChainClient.connect(cg.anvil.rpc_url, cg.deployment, signer.private_key)
        before = chain.balance()

        def job(client: Client, shard_rows: int) -> str:
            return client.submit_inference(
                slow_digits.model,
                slow_digits.inputs,
                shard_rows=shard_rows,
                batch_size=BATCH,
                device="cpu",
                reward_per_task_wei=REWARD,
            ).job_id

        class CrashAfterFunding(Client):
            """Kills the coordinator between funding an escrow and submitting its job; with
            `back_in` set, a thread starts it again that many seconds later."""

            back_in: float | None = None

            def _fund(self, *args: Any) -> Any:
                funded = super()._fund(*args)
                if not funded:  # the escrow was there already: nothing between to crash in
                    return funded
                grid.kill_proc(_proc(grid, COORDINATOR))
                if self.back_in is not None:
                    restarting = threading.Timer(self.back_in, lambda: grid.restart(_proc(grid, COORDINATOR)))
                    restarting.start()
                return funded

        crashing = CrashAfterFunding(grid.target, signer, chain=chain, ca_cert=grid.ca_cert)
        with crashing:
            crashing.submit_retry_s = 0.5  # the coordinator stays down: the SDK gives up and says how to go on
            with pytest.raises(SubmitInterrupted) as interrupted:
                job(crashing, 1000)
            grid.restart(_proc(grid, COORDINATOR))
            _wait(lambda: _answers(crashing), "the client's channel to reconnect")
            # the same spec again, as the error says: its escrow is not funded a second time
            jobs = [crashing.submit(interrupted.value.spec, tasks=interrupted.value.tasks).job_id]
            assert jobs[0] == interrupted.value.job_id
            crashing.submit_retry_s, crashing.back_in = 60.0, 1.0  # back within a second: the SDK just retries
            jobs.append(job(crashing, 1500))
        with Client(grid.target, signer, chain=chain, ca_cert=grid.ca_cert) as client:
            jobs += [job(client, rows) for rows in (2000, 2500, 3000)]
            for crash in range(3):  # three more crashes while the jobs run, and one node's
                time.sleep(1.5)
                grid.kill_proc(_proc(grid, COORDINATOR))
                if crash == 1:
                    node = _proc(grid, "node0")
                    grid.kill_proc(node)
                    grid.restart(node)
                grid.restart(_proc(grid, COORDINATOR))
            finals = [client.wait(j) for j in jobs]
            for final in finals:
                assert final.state == JobState.SUCCEEDED, final.error
                assert final.tasks_done == final.tasks_total
            # each escrow closed, every charged wei claimed by the nodes and none twice, the
            # contract owing nothing (the chain's clock moved past the challenge window, not waited for)
            charged = settled_once(cg.anvil, cg.deployment, cg.node_keys, client, jobs)
            escrows = [client.escrow(j) for j in jobs]
            for final, escrow in zip(finals, escrows, strict=True):
                v = final.verification  # each shard charged once, and the fee's wins (checkers', decoys')
                assert v is not None and escrow.charged == REWARD * (final.tasks_total - v.decoys) + v.fee_paid_wei
            assert charged == sum(e.charged for e in escrows)
            assert before - chain.balance() - charged < GAS_PER_JOB * len(jobs)  # the rest came back
            assert before - chain.balance() >= charged
    finally:
        stopper.stop(cg)
