"""Each job's verification report on a real grid: check counts, the policy's odds and stake,
slashes that reached the chain, through gRPC, the SDK and the `tensorgrid` CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import select

from coordinator.db import schema as s
from coordinator.db.engine import make_engine
from coordinator.repositories.ledger.slashing import queue_slash
from coordinator.services.verification.policy import VerificationPolicy
from tensorgrid.chain.client import ChainClient, JobStatus
from tensorgrid.client import Client
from tensorgrid.crypto import Signer, write_key_file
from tensorgrid.devnet import ChainGrid, start_chain_grid
from tensorgrid.localgrid import LocalGrid
from tensorgrid.report import format_eth
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import JobState
from tests.integration.conftest import BATCH, FAST, Assets, Stopper, node_args

pytestmark = pytest.mark.integration
ONE_NODE = pytest.mark.xdist_group("job_report_one_node")  # share one module grid per worker (see make_module_grid)
REWARD = 10**12
T = TypeVar("T")


def cli(grid: LocalGrid, key: Path, *args: str) -> str:
    """Run the real `tensorgrid` command line against the grid; its stdout."""
    out = subprocess.run(
        [sys.executable, "-m", "tensorgrid.cli", *args, "--coordinator", grid.target, "--key", str(key)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout


def test_report_counts_checks_and_states_odds_and_stake(
    make_grid: Callable[..., LocalGrid], digits: Assets, tmp_path: Path
) -> None:
    grid = make_grid()
    grid.start_coordinator()
    for i in (1, 2):
        grid.start_node(f"node{i}", *node_args(i))
    policy = VerificationSpec(spot_rows=40, canary_rate=0.0)
    signer = Signer.generate()
    key = tmp_path / "submitter.key"
    write_key_file(key, signer)
    with Client(grid.target, signer) as client:
        job = client.submit_inference(
            digits.model,
            digits.inputs,
            shard_rows=500,
            batch_size=BATCH,
            device="cpu",
            verification=policy,
            reward_per_task_wei=REWARD,  # no chain here: priced for the stake, never charged
        )
        assert job.verification is not None and job.verification.checks == {}  # reported from the start
        final = client.wait(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        kinds = [e.kind for e in client.watch(job.job_id)]
        listed = client.jobs(limit=5)
    report = final.verification
    assert report is not None and report.mode == "spotcheck"
    expected = VerificationPolicy(policy, 6, 500, REWARD)
    assert report.detection == pytest.approx(expected.worst_detection) and 0 < report.detection < 1
    assert report.required_stake_wei == expected.required_stake_wei > REWARD * 6
    # Every result of an untrusted node is checked: one verified check per shard, nothing else.
    assert report.checks == {"spotcheck:verified": 6} and kinds.count("verified") == 6
    assert (report.count("verified"), report.count("caught"), report.slashes, report.slashed_wei) == (6, 0, 0, 0)
    assert all(j.verification is None for j in listed)  # the list stays one query

    status = cli(grid, key, "job", "status", job.job_id)
    pct = f"{int(report.detection * 1000) / 10:.1f}%"
    line = (
        f"verification: spotcheck, 6 checks (6 verified), detection ≥ {pct}, "
        f"stake required {format_eth(report.required_stake_wei)}"
    )
    assert "state    succeeded" in status and line in status
    nodes = cli(grid, key, "nodes")
    assert "slashed" in nodes.splitlines()[0] and len(nodes.splitlines()) == 3


@pytest.fixture(scope="module")
def module_grid(make_module_grid: Callable[..., LocalGrid]) -> LocalGrid:
    grid = make_module_grid()
    grid.start_coordinator()
    grid.start_node("node1", *node_args())
    return grid


@pytest.fixture
def one_node_grid(module_grid: LocalGrid) -> LocalGrid:
    """A coordinator and one node, shared by the tests that check only their own jobs."""
    module_grid.check_running()
    return module_grid


@ONE_NODE
def test_job_without_verification_says_so(one_node_grid: LocalGrid, tmp_path: Path) -> None:
    grid = one_node_grid
    signer = Signer.generate()
    key = tmp_path / "submitter.key"
    write_key_file(key, signer)
    with Client(grid.target, signer) as client:
        job = client.submit_noop(2)
        assert client.wait(job.job_id).state == JobState.SUCCEEDED
    status = cli(grid, key, "job", "status", job.job_id)
    assert "verification: none (signature, lease holder and output hash only)" in status


@ONE_NODE
def test_cli_submit_sets_the_policy_and_refuses_a_bad_one(
    one_node_grid: LocalGrid, digits: Assets, tmp_path: Path
) -> None:
    grid = one_node_grid
    key = tmp_path / "submitter.key"
    write_key_file(key, Signer.generate())
    files = ("--model", str(digits.model), "--inputs", str(digits.inputs), "--shard-rows", "1500")
    out = cli(grid, key, "job", "submit", *files, "--verification", "none", "--watch")
    job_id = out.split("submitted job ")[1].split()[0]
    assert "verification: none" in cli(grid, key, "job", "status", job_id)
    bad = subprocess.run(
        [sys.executable, "-m", "tensorgrid.cli", "job", "submit", *files, "--target-detection", "1.5"]
        + ["--coordinator", grid.target, "--key", str(key)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "target_detection" in bad.stderr, bad.stderr


@pytest.fixture
def devnet(tmp_path: Path, stopper: Stopper) -> Iterator[ChainGrid]:
    cg = start_chain_grid(tmp_path / "devnet", 2, epoch_s=1.0, challenge_window_s=1, coordinator_args=FAST)
    try:
        cg.grid.wait_for_nodes(2)
        yield cg
    finally:
        stopper.stop(cg)


def wait_for(check: Callable[[], T | None | bool], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value  # type: ignore[return-value]
        time.sleep(0.3)
    raise AssertionError("timed out")


def test_a_slash_reaches_the_chain_and_the_report(devnet: ChainGrid, digits: Assets, tmp_path: Path) -> None:
    signer = Signer.from_hex(devnet.submitter_key)
    chain = ChainClient.connect(devnet.anvil.rpc_url, devnet.deployment, signer.private_key)
    with Client(devnet.grid.target, signer, chain=chain) as client:
        job = client.submit_inference(
            digits.model, digits.inputs, shard_rows=500, batch_size=BATCH, device="cpu", reward_per_task_wei=10**15
        )
        assert client.wait(job.job_id).state == JobState.SUCCEEDED
        wait_for(lambda: client.escrow(job.job_id).status == JobStatus.COMPLETED)  # refund done: balances settle
        # Stand in for verification catching a node: queue_slash on one of its stored receipts,
        # in a transaction on the running coordinator's database. Its outbox worker does the rest.
        engine = make_engine(f"sqlite:///{devnet.grid.root / 'coordinator' / 'coordinator.db'}")
        try:
            with engine.begin() as conn:
                task_id, attempt, node = conn.execute(
                    select(s.receipts.c.task_id, s.receipts.c.attempt, s.receipts.c.node).limit(1)
                ).one()
                stake_before, balance_before = chain.stake_of(node), chain.balance()
                assert queue_slash(
                    conn,
                    node=node,
                    job_id=job.job_id,
                    task_id=task_id,
                    attempt=attempt,
                    correct_output_sha="c0" * 32,
                    now_ms=int(time.time() * 1000),
                )
        finally:
            engine.dispose()
        report = wait_for(lambda: (v := client.job(job.job_id).verification) is not None and v.slashes > 0 and v)
        taken = report.slashed_wei
        assert taken > 0
        assert chain.stake_of(node) == stake_before - taken
        assert chain.balance() == balance_before + taken  # the submitter, harmed, is paid
        assert {n.address: n.slashed_wei for n in client.nodes()}[node] == taken
        assert client.earnings(node).slashed_wei == taken
        assert "slashed" in [e.kind for e in client.watch(job.job_id)]
