"""Training on a chain-settled grid: the CLI and SDK fund a training job's escrow (reward × rounds
× workers) only once the coordinator has validated the spec, the nodes are paid for every audited
pseudo-gradient, and a spec the coordinator refuses funds nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tensorgrid.chain.client import ChainClient, JobStatus
from tensorgrid.client import Client, CoordinatorError
from tensorgrid.crypto import Signer, write_key_file
from tensorgrid.devnet import ChainGrid, start_chain_grid
from tensorgrid.spec import TrainingSpec, canonical_json, spec_hash
from tests.integration.conftest import FAST, Stopper, wait_for
from tests.integration.conftest import TrainingDigits as Digits

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("training-settlement")]
REWARD = 10**15
SMALL = {"rounds": 2, "workers_per_round": 2, "inner_steps": 10, "device": "cpu", "quorum": 1.0}


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory, stopper: Stopper) -> Iterator[ChainGrid]:
    cg = start_chain_grid(
        tmp_path_factory.mktemp("devnet"), 2, epoch_s=1.0, challenge_window_s=1, coordinator_args=FAST
    )
    try:
        cg.grid.wait_for_nodes(2)
        yield cg
    finally:
        stopper.stop(cg)


def submitter(cg: ChainGrid, key: str = "") -> Client:
    """The devnet's submitter, or another funded account of its anvil (jobs of its own)."""
    signer = Signer.from_hex(key or cg.submitter_key)
    return Client(
        cg.grid.target, signer, chain=ChainClient.connect(cg.anvil.rpc_url, cg.deployment, signer.private_key)
    )


def cli(cg: ChainGrid, key: Path, *args: str) -> subprocess.CompletedProcess[str]:
    connection = ("--coordinator", cg.grid.target, "--key", str(key), *cg.chain_args)
    return subprocess.run(
        [sys.executable, "-m", "tensorgrid.cli", "job", args[0], *connection, *args[1:]],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_funds_rounds_times_workers_and_every_audited_result_is_paid(
    devnet: ChainGrid, digits_training: Digits, tmp_path: Path
) -> None:
    d = digits_training
    key = write_key_file(tmp_path / "submitter.key", Signer.from_hex(devnet.submitter_key))
    proc = cli(
        devnet, key, "submit-training",
        "--program", str(d.train), "--eval-program", str(d.eval), "--dataset", str(d.dataset),
        "--rounds", "2", "--workers", "2", "--inner-steps", "10", "--quorum", "1.0", "--device", "cpu",
        "--verification", "replicate", "--reward-wei", str(REWARD), "--watch",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("submitted training job"))
    assert "succeeded" in proc.stdout
    with submitter(devnet) as client:
        assert client.chain is not None
        escrow = client.escrow(job_id)
        assert escrow.budget == REWARD * 2 * 2 and escrow.reward_per_task == REWARD  # rounds × workers
        escrow = wait_for(lambda: (e := client.escrow(job_id)).status == JobStatus.COMPLETED and e)
        assert escrow.charged == REWARD * 4  # replicate: every result audited, passed, then paid
        status = cli(devnet, key, "status", job_id)
        assert status.returncode == 0, status.stderr
        assert "verification: replicate, 4 audits (4 passed)" in status.stdout, status.stdout
        time.sleep(devnet.deployment.challenge_window + 1)
        devnet.anvil.rpc("evm_mine")
        paid = 0
        for node_key in devnet.node_keys:
            node = ChainClient.connect(devnet.anvil.rpc_url, devnet.deployment, node_key)
            earned = wait_for(lambda a=node.address: (e := client.earnings(a)).pending_wei == 0 and e)  # type: ignore[misc]
            if earned.claim_cumulative_wei:
                node.claim(earned.claim_cumulative_wei, earned.claim_proof)
            paid += node.claimed(node.address)
        assert paid == escrow.charged


def test_a_spec_the_coordinator_refuses_funds_nothing(
    devnet: ChainGrid, digits_training: Digits, tmp_path: Path
) -> None:
    d = digits_training
    garbage = tmp_path / "not-a-program.pt2"
    garbage.write_bytes(b"PK\x03\x04 not an exported program")
    with submitter(devnet, devnet.anvil.keys[5]) as client:
        assert client.chain is not None
        before, nonce = client.chain.balance(), client.chain.pending_nonce()
        with pytest.raises(CoordinatorError) as refused:  # passes the SDK's checks; the coordinator's fail
            client.submit_training(garbage, d.dataset, reward_per_task_wei=REWARD, **SMALL)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, refused.value
        assert client.chain.balance() == before  # not a wei, not even gas: no transaction was sent
        assert client.chain.pending_nonce() == nonce
        assert client.jobs() == []


def test_an_escrow_for_round_zero_only_is_refused(devnet: ChainGrid, digits_training: Digits) -> None:
    """The coordinator wants reward × rounds × workers in escrow, not just round 0's tasks."""
    d = digits_training
    with submitter(devnet, devnet.anvil.keys[6]) as client:
        assert client.chain is not None
        spec = TrainingSpec(
            train_program=client.upload(d.train), dataset=client.upload(d.dataset), reward_per_task_wei=REWARD, **SMALL
        )
        checked = client.validate_job(spec)  # no escrow needed to ask
        assert (checked.tasks, checked.paid_tasks, checked.exists) == (2, 4, False)
        sh = spec_hash(canonical_json(spec))
        deadline = client.chain.chain_time() + 3600
        client.chain.create_job(checked.job_id, sh, deadline, REWARD * 2, reward_per_task=REWARD)
        with pytest.raises(CoordinatorError, match="needs 4000000000000000"):
            client.submit(spec)
        client.chain.cancel(checked.job_id)
        assert client.escrow(checked.job_id).status == JobStatus.CANCELLED
