"""Each job's verification report on a real grid: check counts, the policy's odds and stake,
slashes that reached the chain, through gRPC, the SDK and the `tensorgrid` CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from sqlalchemy import select

from coordinator.db import schema as s
from coordinator.db.engine import make_engine
from coordinator.repositories.ledger.slashing import queue_slash
from coordinator.services.verification.policy import VerificationPolicy
from tensorgrid.chain.client import ChainClient
from tensorgrid.client import Client
from tensorgrid.crypto import Signer, sign_receipt, write_key_file
from tensorgrid.devnet import ChainGrid, start_chain_grid
from tensorgrid.localgrid import LocalGrid
from tensorgrid.nodeclient import NodeClient
from tensorgrid.report import format_eth
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import Capabilities, ErrorKind, JobState, Receipt, TaskError
from tensorgrid.v1 import submit_pb2, submit_pb2_grpc
from tests.integration.conftest import BATCH, FAST, PAIR, Assets, Stopper, node_args

pytestmark = pytest.mark.integration
ONE_NODE = pytest.mark.xdist_group("job_report_one_node")  # share one module grid per worker (see make_module_grid)
REWARD = 10**12
CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
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


@PAIR
def test_report_counts_checks_and_states_odds_and_stake(pair_grid: LocalGrid, digits: Assets, tmp_path: Path) -> None:
    grid = pair_grid  # both nodes in before the job: the nodes listing counts them
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
    records = [json.loads(line) for line in cli(grid, key, "nodes", "--json").splitlines()]
    assert len({r["address"] for r in records}) == 2 and all(r["address"].startswith("0x") for r in records)
    assert sum(r["completed"] for r in records) >= 6 and all(r["slashed_wei"] == 0 for r in records)


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


def test_a_slash_reaches_the_chain_and_the_report(devnet: ChainGrid, tmp_path: Path) -> None:
    """A node caught on an open job: the coordinator proposes the slash with the node's own receipt,
    the stake leaves at once, the guardian's delay passes, the coordinator executes it, the report
    counts it, and the submitter (the beneficiary the contract recorded) withdraws the proceeds."""
    signer = Signer.from_hex(devnet.submitter_key)
    chain = ChainClient.connect(devnet.anvil.rpc_url, devnet.deployment, signer.private_key)
    with Client(devnet.grid.target, signer, chain=chain) as client:
        job = client.submit_noop(2, device="cuda", reward_per_task_wei=10**15)  # no CUDA node: it stays open
        node_key = devnet.node_keys[0]
        node = Signer.from_hex(node_key).address
        # Stand in for verification catching the node on this job: a receipt it signed for one of
        # the job's tasks is stored, and queue_slash runs in a transaction on the coordinator's
        # database. Its outbox worker and settlement timer do the rest.
        engine = make_engine(f"sqlite:///{devnet.grid.root / 'coordinator' / 'coordinator.db'}")
        try:
            with engine.begin() as conn:
                task_id = conn.execute(
                    select(s.tasks.c.task_id).where(s.tasks.c.job_id == job.job_id).limit(1)
                ).scalar_one()
                receipt = sign_receipt(
                    Signer.from_hex(node_key),
                    devnet.deployment.domain,
                    Receipt(job.job_id, task_id, 1, "11" * 32, "22" * 32, "33" * 32),
                )
                conn.execute(
                    s.receipts.insert().values(
                        task_id=task_id, attempt=1, node=node, input_hash=receipt.input_hash,
                        output_hash=receipt.output_hash, commitment=receipt.commitment,
                        signature=receipt.signature, received_ms=1,
                    )
                )  # fmt: skip
                stake_before = chain.stake_of(node)
                assert queue_slash(
                    conn,
                    node=node,
                    job_id=job.job_id,
                    task_id=task_id,
                    attempt=1,
                    correct_output_sha="c0" * 32,
                    now_ms=int(time.time() * 1000),
                )
        finally:
            engine.dispose()
        wait_for(lambda: chain.stake_of(node) < stake_before)  # proposed: out of the stake at once
        taken = stake_before - chain.stake_of(node)
        assert client.job(job.job_id).verification.slashes == 0  # type: ignore[union-attr]  # vetoable yet
        time.sleep(devnet.deployment.slash_delay + 1)
        devnet.anvil.rpc("evm_mine")  # anvil mines on demand: a fresh block carries the time past the delay
        report = wait_for(lambda: (v := client.job(job.job_id).verification) is not None and v.slashes > 0 and v)
        assert report.slashed_wei == taken > 0
        assert chain.proceeds(chain.address) == taken
        before = chain.balance()
        paid = chain.withdraw_proceeds()
        assert chain.balance() == before + taken - paid.fee  # the submitter, harmed, is paid
        assert {n.address: n.slashed_wei for n in client.nodes()}[node] == taken
        assert client.earnings(node).slashed_wei == taken
        client.cancel(job.job_id)
        assert "slashed" in [e.kind for e in client.watch(job.job_id)]


def test_status_lists_the_events_that_failed_the_job(make_grid: Callable[..., LocalGrid], tmp_path: Path) -> None:
    """`job status` says why a job failed: its last notable events (here each node's failure of
    its one task and the job's end), how many earlier ones it left out, none with --events 0."""
    grid = make_grid()
    grid.start_coordinator()  # no node of its own: the bare nodes below take the task
    signer = Signer.generate()
    key = tmp_path / "submitter.key"
    write_key_file(key, signer)
    with Client(grid.target, signer) as client:
        job = client.submit_noop(1, max_attempts=4)

    async def fail_on_nodes(first: int, last: int) -> None:
        for n in range(first, last):
            node = NodeClient(grid.target, Signer.generate())
            await node.register(CPU)
            leases: list[Any] = []
            for _ in range(100):  # a reissued task may wait a moment to be leased again
                leases, _ = await node.lease(1, wait_ms=200)
                if leases:
                    break
            assert leases, f"attempt {n + 1} was never leased"
            await node.report(leases[0].task_id, leases[0].attempt, TaskError(ErrorKind.EXECUTION, f"boom {n + 1}"))

    asyncio.run(fail_on_nodes(0, 2))
    live = cli(grid, key, "job", "status", job.job_id)  # a live job: its record so far
    assert "state    running" in live and live.count("task 0 reissued: execution: boom") == 2, live
    with Client(grid.target, signer) as client:  # the live job's record only: its stream ends by itself
        request = submit_pb2.WatchJobRequest(job_id=job.job_id, recorded_only=True)
        stub = submit_pb2_grpc.SubmitterServiceStub(grpc.insecure_channel(grid.target))
        call = stub.WatchJob(request, metadata=client.session_metadata(), timeout=20)
        kinds = [event.kind for event in call]  # DEADLINE_EXCEEDED had it followed the job
    assert kinds.count("reissued") == 2 and kinds[0] == "submitted", kinds
    asyncio.run(fail_on_nodes(2, 4))
    with Client(grid.target, signer) as client:
        assert client.wait(job.job_id).state == JobState.FAILED

    status = cli(grid, key, "job", "status", job.job_id)
    lines = status.splitlines()
    events = lines[lines.index("  events") + 1 :]
    assert [line.split("  ", 1)[1].split(":")[0] for line in (e.strip() for e in events)] == [
        "task 0 reissued",
        "task 0 reissued",
        "task 0 reissued",
        "failed",
    ], status
    assert "boom 1" in events[0] and "failed 4 times" in events[3] and "left out" not in status
    assert not any("submitted" in e or "running" in e for e in events)  # milestones, not notable

    last_two = cli(grid, key, "job", "status", job.job_id, "--events", "2").splitlines()
    shown = last_two[last_two.index("  events") + 1 :]
    assert shown[0] == f"    (2 earlier events left out: `tensorgrid job watch {job.job_id}` shows all)"
    assert "boom 3" in shown[1] and "failed 4 times" in shown[2] and len(shown) == 3

    none = cli(grid, key, "job", "status", job.job_id, "--events", "0")
    assert "events" not in none and "reissued" not in none and "state    failed" in none
    record = json.loads(cli(grid, key, "job", "status", job.job_id, "--json", "--events", "3"))
    assert [e["kind"] for e in record["events"]] == ["reissued", "reissued", "failed"]
    assert record["events_left_out"] == 1 and record["state"] == "failed"
