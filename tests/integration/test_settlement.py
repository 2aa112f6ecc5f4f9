"""Settlement on a real devnet: anvil, deployed contracts, a coordinator and staked nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tensorgrid.chain.client import ChainClient, JobStatus
from tensorgrid.chain.errors import ContractReverted
from tensorgrid.chain.merkle import EarningsTree
from tensorgrid.client import Client, CoordinatorError
from tensorgrid.crypto import Signer
from tensorgrid.devnet import ChainGrid, start_chain_grid
from tensorgrid.nodeclient import NodeClient
from tensorgrid.spec import InferenceSpec, VerificationSpec
from tensorgrid.types import Capabilities, JobState
from tensorgrid.v1 import submit_pb2
from tests.integration.conftest import BATCH, FAST, Assets, Stopper, wait_for
from tests.integration.payments import posted
from tests.integration.test_inference import assert_matches_local

pytestmark = pytest.mark.integration
REWARD = 10**15


SHARED = pytest.mark.xdist_group("settlement")  # share one module grid per worker (see make_module_grid)


def _devnet(root: Path, stopper: Stopper) -> Iterator[ChainGrid]:
    cg = start_chain_grid(root, 2, epoch_s=1.0, challenge_window_s=1, coordinator_args=FAST)
    try:
        cg.grid.wait_for_nodes(2)  # both at work from the first task: each earns, each claims
        yield cg
    finally:
        stopper.stop(cg)


@pytest.fixture
def devnet(tmp_path: Path, stopper: Stopper) -> Iterator[ChainGrid]:
    """A devnet of its own, for a test that counts every job, charge or payment on it."""
    yield from _devnet(tmp_path / "devnet", stopper)


@pytest.fixture(scope="module")
def module_devnet(tmp_path_factory: pytest.TempPathFactory, stopper: Stopper) -> Iterator[ChainGrid]:
    yield from _devnet(tmp_path_factory.mktemp("devnet"), stopper)


@pytest.fixture
def shared_devnet(module_devnet: ChainGrid) -> ChainGrid:
    """One devnet for the tests that each check only their own job or node."""
    module_devnet.grid.check_running()
    return module_devnet


def submitter(cg: ChainGrid) -> Client:
    signer = Signer.from_hex(cg.submitter_key)
    return Client(
        cg.grid.target, signer, chain=ChainClient.connect(cg.anvil.rpc_url, cg.deployment, signer.private_key)
    )


def test_funded_job_is_charged_recorded_refunded_and_claimed(devnet: ChainGrid, digits: Assets, tmp_path: Path) -> None:
    with submitter(devnet) as client:
        assert client.chain is not None
        before = client.chain.balance()
        # 5-row checks: a default check of a 500-row shard (12 rows) is at the compute budget already,
        # which leaves none for decoys; at 5 rows it pays for a 5-row decoy per shard (D = T) and its check
        job = client.submit_inference(
            digits.model,
            digits.inputs,
            shard_rows=500,
            batch_size=BATCH,
            device="cpu",
            reward_per_task_wei=REWARD,
            verification=VerificationSpec(spot_rows=5, decoys=1),
        )
        final = client.wait(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        assert final.result is not None
        escrow = wait_for(lambda: (e := client.escrow(job.job_id)).status == JobStatus.COMPLETED and e)
        assert escrow.result_hash == final.result.sha256
        report = final.verification
        assert report is not None and report.fee_budget_wei == escrow.budget - REWARD * 6 > 0  # the checkers' fee
        # 6 shards and 6 decoys of a check's size carved out of them (D = T), every decoy paid by rows
        assert (final.tasks_total, report.decoys, report.decoys_drawn) == (12, 6, 6)
        # each shard once, and the checkers' and decoys' wins from the fee (a draw per verified check
        # and per decoy): every charge a whole reward, never past the fee
        assert escrow.charged == REWARD * (final.tasks_total - report.decoys) + report.fee_paid_wei
        assert report.decoy_paid_wei <= report.fee_paid_wei <= report.fee_budget_wei
        assert report.decoy_paid_wei % REWARD == 0
        client.result(job.job_id, tmp_path / "result.safetensors")  # the shards and decoys, in row order
        assert_matches_local(tmp_path / "result.safetensors", digits)
        # budget went in, the unspent part came back: the submitter paid the charge plus gas only
        spent = before - client.chain.balance()
        assert escrow.charged <= spent < escrow.charged + 10**16
        posted(client, devnet.node_keys)  # all in a root on chain, then the chain's clock past its window
        devnet.anvil.advance_time(devnet.deployment.challenge_window + 1)
        paid = 0
        for key in devnet.node_keys:
            node = ChainClient.connect(devnet.anvil.rpc_url, devnet.deployment, key)
            earned = client.earnings(node.address)
            assert earned.pending_wei == 0
            if not earned.cumulative_wei:  # a node may have only checked, and a check's pay is a draw
                continue
            assert earned.claim_epoch >= 1
            if earned.claim_cumulative_wei:
                node.claim(earned.claim_cumulative_wei, earned.claim_proof)
            assert node.claimed(node.address) == earned.cumulative_wei
            paid += earned.cumulative_wei
            # anyone can audit the root the claim was checked against: every leaf is public
            epoch = client.stub.GetEpoch(submit_pb2.GetEpochRequest(epoch=earned.claim_epoch))
            leaves = {leaf.node: int(leaf.cumulative_wei) for leaf in epoch.leaves}
            assert leaves[node.address] == earned.claim_cumulative_wei and epoch.state == "confirmed"
            assert EarningsTree(leaves).root.hex() == epoch.root == client.chain.root_of(epoch.epoch).root
            assert sum(leaves.values()) == int(epoch.total_wei)
        assert paid == escrow.charged
        latest = client.stub.GetEpoch(submit_pb2.GetEpochRequest())  # 0: the latest
        assert latest.epoch >= max(epoch.epoch, client.chain.last_epoch())  # a newer one may still be posting
        with pytest.raises(grpc.RpcError) as missing:
            client.stub.GetEpoch(submit_pb2.GetEpochRequest(epoch=latest.epoch + 1))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_cancel_after_result_still_pays_the_nodes(devnet: ChainGrid, digits: Assets, tmp_path: Path) -> None:
    """No free work: a submitter who has the result and then walks away (cancels through the
    coordinator and on chain) gets back only what was not spent; the nodes are paid in full."""
    with submitter(devnet) as client:
        assert client.chain is not None
        before = client.chain.balance()
        job = client.submit_inference(  # every result re-run whole: each checker proven right wins one reward
            digits.model,
            digits.inputs,
            shard_rows=500,
            batch_size=BATCH,
            device="cpu",
            reward_per_task_wei=REWARD,
            verification=VerificationSpec(mode="replicate", canary_rate=0.0),
        )
        final = client.wait(job.job_id)
        assert final.state == JobState.SUCCEEDED and final.result is not None, final.error
        assert final.verification is not None and final.verification.fee_paid_wei == REWARD * 6
        escrow = client.escrow(job.job_id)
        assert escrow.locked  # locked at the first lease, before any result existed
        client.result(job.job_id, tmp_path / "result.safetensors")  # the submitter has what it paid for
        try:  # ... and tries to take the escrow back on chain
            client.chain.cancel(job.job_id)
            raise AssertionError("a locked escrow was cancelled before its deadline")
        except ContractReverted as e:  # still locked, or already settled by the coordinator
            assert e.error in ("LockedUntilDeadline", "JobNotOpen"), e
        with pytest.raises(CoordinatorError) as refused:  # a finished job stays finished
            client.cancel(job.job_id)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION and "succeeded" in str(refused.value)
        assert client.job(job.job_id).state == JobState.SUCCEEDED
        escrow = wait_for(lambda: (e := client.escrow(job.job_id)).status == JobStatus.COMPLETED and e)
        assert escrow.charged == REWARD * (6 + 6) and escrow.locked  # 6 tasks, 6 checks
        spent = before - client.chain.balance()
        assert REWARD * 12 <= spent < REWARD * 12 + 10**16  # the unspent part (none here) and gas only
        posted(client, devnet.node_keys)  # all in a root on chain, then the chain's clock past its window
        devnet.anvil.advance_time(devnet.deployment.challenge_window + 1)
        paid = 0
        for key in devnet.node_keys:
            node = ChainClient.connect(devnet.anvil.rpc_url, devnet.deployment, key)
            earned = client.earnings(node.address)
            if earned.claim_cumulative_wei:
                node.claim(earned.claim_cumulative_wei, earned.claim_proof)
            paid += node.claimed(node.address)
        assert paid == escrow.charged  # every verified task and check paid, though the submitter walked away


@SHARED
def test_no_escrow_no_scheduling(shared_devnet: ChainGrid, digits: Assets, tmp_path: Path) -> None:
    devnet = shared_devnet
    with submitter(devnet) as funded, Client(devnet.grid.target, Signer.from_hex(devnet.submitter_key)) as unfunded:
        jobs_before = [j.job_id for j in funded.jobs()]  # the module's other tests' jobs, by the same submitter
        with pytest.raises(CoordinatorError, match="no escrow") as e:
            unfunded.submit_noop(3, reward_per_task_wei=REWARD)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        # the escrow is checked before any sharding: inputs that planning would refuse never get read
        garbage = tmp_path / "not-tensors.safetensors"
        garbage.write_bytes(b"not a tensor file")
        model, inputs = unfunded.upload(digits.model), unfunded.upload(garbage)
        spec = InferenceSpec(model=model, inputs=inputs, shard_rows=10, reward_per_task_wei=REWARD)
        with pytest.raises(CoordinatorError, match="no escrow"):
            unfunded.submit(spec)
        with pytest.raises(CoordinatorError, match="reward_per_task_wei"):
            funded.submit_noop(3)
        assert [j.job_id for j in funded.jobs()] == jobs_before  # none of these made a job


@SHARED
def test_cancel_refunds_the_escrow(shared_devnet: ChainGrid) -> None:
    with submitter(shared_devnet) as client:
        assert client.chain is not None
        job = client.submit_noop(4, device="cuda", reward_per_task_wei=REWARD)  # no CUDA node: it waits
        assert client.escrow(job.job_id).remaining == 4 * REWARD
        assert client.cancel(job.job_id).state == JobState.CANCELLED
        escrow = client.escrow(job.job_id)
        assert escrow.status == JobStatus.CANCELLED and escrow.charged == 0
        assert not escrow.locked  # no task was ever leased: nothing to protect, all refunded


@SHARED
def test_a_node_without_stake_cannot_register(shared_devnet: ChainGrid) -> None:
    async def scenario() -> None:
        node = NodeClient(shared_devnet.grid.target, Signer.generate())
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await node.register(Capabilities("cpu", 1 << 30, 2))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "stake" in (e.value.details() or "")
        await node.close()

    asyncio.run(scenario())
