"""Inference end to end: SDK → coordinator → node daemons → one result equal to local inference."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch

from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import COORDINATOR, LocalGrid, Proc
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import JobInfo, JobState
from tensorgrid.workloads.tensorfile import load_tensors
from tests.integration.conftest import BATCH, PAIR, Assets, node_args, wait_for
from tests.procs import children

pytestmark = pytest.mark.integration
SHARED = PAIR  # the tests that each check only their own job share pair_grid


@pytest.fixture
def grid(pair_grid: LocalGrid) -> LocalGrid:
    return pair_grid


def assert_matches_local(result: Path, assets: Assets) -> None:
    got = load_tensors(result)["output"]
    want = load_tensors(assets.expected)["output"]
    assert got.shape == want.shape == (assets.rows, 10)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def run_job(grid: LocalGrid, assets: Assets, tmp: Path, shard_rows: int = 500) -> tuple[str, list[str]]:
    with grid.client(Signer.generate()) as client:
        job = client.submit_inference(
            assets.model, assets.inputs, shard_rows=shard_rows, batch_size=BATCH, device="cpu"
        )
        kinds = [e.kind for e in client.watch(job.job_id)]
        final = client.job(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        client.result(job.job_id, tmp / "out.safetensors")
    assert_matches_local(tmp / "out.safetensors", assets)
    return job.job_id, kinds


@SHARED
def test_two_nodes_sqlite(grid: LocalGrid, digits: Assets, tmp_path: Path) -> None:
    _, kinds = run_job(grid, digits, tmp_path)
    assert kinds[0] == "submitted" and kinds[-1] == "succeeded"
    assert kinds.count("completed") == 6
    # Vetting, probing, checking and assembling an inference job need no torch in the process
    # that holds the coordinator's key: programs run only in its sandboxed child.
    coordinator = next(p for p in grid.procs if p.name == COORDINATOR)
    maps = Path(f"/proc/{coordinator.popen.pid}/maps").read_text()
    assert "libtorch" not in maps, "the coordinator's process loaded torch"


def test_two_nodes_postgres(make_grid: Callable[..., LocalGrid], digits: Assets, tmp_path: Path, pg_url: str) -> None:
    grid = make_grid("--database-url", pg_url)
    grid.start_coordinator()
    for i in range(2):
        grid.start_node(f"node{i}", *node_args())
    run_job(grid, digits, tmp_path)


def test_node_killed_mid_task_is_reissued(
    make_grid: Callable[..., LocalGrid], slow_digits: Assets, tmp_path: Path
) -> None:
    grid = make_grid()
    grid.start_coordinator()
    victim = grid.start_node("victim", *node_args())
    with Client(grid.target, Signer.generate()) as client:
        job = submit_slow(client, slow_digits)
        for ev in client.watch(job.job_id):
            if ev.kind == "running":  # the victim holds a lease now
                break
        time.sleep(0.5)
        grid.kill_proc(victim)
        grid.start_node("rescuer", *node_args())
        kinds = [e.kind for e in client.watch(job.job_id)]
        assert client.job(job.job_id).state == JobState.SUCCEEDED
        assert "reissued" in kinds
        client.result(job.job_id, tmp_path / "out.safetensors")
    assert_matches_local(tmp_path / "out.safetensors", slow_digits)


def test_coordinator_restart_mid_job(make_grid: Callable[..., LocalGrid], slow_digits: Assets, tmp_path: Path) -> None:
    grid = make_grid("--lease-ttl-ms", "60000")  # leases outlive the downtime, however slow the restart
    coordinator = grid.start_coordinator()
    submitter, job = _two_nodes_under_way(grid, slow_digits)
    grid.kill_proc(coordinator)  # a crash, not a clean stop
    # The nodes were mid-task: each finishes, cannot hand its result in, and keeps it.
    kept = _wait_for_kept_results(grid)
    time.sleep(2.0)  # down a while longer: the nodes' channels back off
    grid.start_coordinator(port=grid.port)
    with Client(grid.target, submitter) as client:  # a job is visible to its submitter only
        final = client.wait(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        assert final.tasks_done == final.tasks_total == 12
        client.result(job.job_id, tmp_path / "out.safetensors")
    assert_matches_local(tmp_path / "out.safetensors", slow_digits)
    for name, task in kept:  # each kept result was taken after the restart, not run again
        log = next(p for p in grid.procs if p.name == name).log_path.read_text()
        assert f"task {task} accepted" in log.split(f"task {task}: result kept", 1)[1], log[-3000:]


def test_a_node_killed_holding_a_finished_result_hands_it_in_when_it_starts_again(
    make_grid: Callable[..., LocalGrid], slow_digits: Assets, tmp_path: Path
) -> None:
    grid = make_grid()
    coordinator = grid.start_coordinator("--lease-ttl-ms", "60000")  # a minute to come back for a lease
    submitter, job = _two_nodes_under_way(grid, slow_digits)
    grid.kill_proc(coordinator)
    name, task = _wait_for_kept_results(grid)[0]  # finished, not handed in: on the node's disk
    node = next(p for p in grid.procs if p.name == name)
    grid.kill_proc(node)  # and then that daemon dies too
    grid.restart(coordinator)
    node = grid.restart(node)
    with Client(grid.target, submitter) as client:
        final = client.wait(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        assert final.tasks_done == final.tasks_total == 12
        client.result(job.job_id, tmp_path / "out.safetensors")
    assert_matches_local(tmp_path / "out.safetensors", slow_digits)
    log = node.log_path.read_text()
    handed = f"task {task}: handing in a result kept by an earlier run"
    assert handed in log and f"task {task} accepted" in log.split(handed, 1)[1], log[-3000:]
    assert list((grid.root / name / "work" / "pending").iterdir()) == []


def submit_slow(client: Client, slow_digits: Assets) -> JobInfo:
    """The 12-shard slow job these lifecycle tests run, without decoys: 12 slow shards are enough
    to be under way when a process dies, whatever the default policy."""
    return client.submit_inference(
        slow_digits.model,
        slow_digits.inputs,
        shard_rows=1000,
        batch_size=BATCH,
        device="cpu",
        verification=VerificationSpec(decoys=0),
    )


def _two_nodes_under_way(grid: LocalGrid, slow_digits: Assets) -> tuple[Signer, JobInfo]:
    """Two nodes working through a 12-task job, two tasks of it done and a node's worker
    computing the next (so a coordinator killed now finds a task in a node's hands, not between
    a result and the next input's fetch): its submitter and the job."""
    for i in range(2):
        grid.start_node(f"node{i}", *node_args())
    grid.wait_for_nodes(2, timeout=300)  # both at work when the coordinator dies
    submitter = Signer.generate()
    with Client(grid.target, submitter) as client:
        job = submit_slow(client, slow_digits)
        for ev in client.watch(job.job_id):
            if ev.kind == "completed" and ev.tasks_done >= 2:
                break
        _until_a_worker_computes([p for p in grid.procs if p.name.startswith("node")])
    return submitter, job


def _until_a_worker_computes(nodes: list[Proc], timeout: float = 60) -> None:
    """Until a node's task worker has used 50 ms of CPU within the last 0.5 s: a task is being
    computed (its program is warm after the node's first task, so that is the compute, not a load;
    an idle worker uses none). Sampled every 0.1 s over a 0.5 s window, not 50 ms within one
    0.1 s sample: on two cores under a load of 5 a computing worker gets ~40 ms per 0.1 s, and a
    whole job went by unseen (failed in a loaded suite run)."""

    def worker_seconds(node: Proc) -> float:
        total = 0.0
        with contextlib.suppress(psutil.Error):
            for pid in children(node.popen.pid):  # its workers, exec'd or forked by a zygote
                with contextlib.suppress(psutil.Error):
                    total += sum(psutil.Process(pid).cpu_times()[:2])
        return total

    deadline = time.monotonic() + timeout
    window = [[worker_seconds(n) for n in nodes]]
    while time.monotonic() < deadline:
        time.sleep(0.1)
        window = [*window[-4:], [worker_seconds(n) for n in nodes]]
        if any(now - then >= 0.05 for then, now in zip(window[0], window[-1], strict=True)):
            return
    raise AssertionError(f"no node's worker computed within {timeout} s")


def _wait_for_kept_results(grid: LocalGrid, timeout: float = 60) -> list[tuple[str, str]]:
    """(node, "task/attempt") of each result a node finished and kept while the coordinator was down."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kept = [
            (p.name, m.group(1))
            for p in grid.procs
            if p.name.startswith("node")
            for m in re.finditer(r"task (\S+): result kept", p.log_path.read_text(errors="replace"))
        ]
        if kept:
            return kept
        time.sleep(0.1)
    raise AssertionError("no node kept a finished result: " + " | ".join(p.log_tail(10) for p in grid.procs))


def test_sigterm_drains_and_second_sigterm_stops(
    make_grid: Callable[..., LocalGrid], slow_digits: Assets, tmp_path: Path
) -> None:
    grid = make_grid()
    grid.start_coordinator()
    node = grid.start_node("node", *node_args())
    with Client(grid.target, Signer.generate()) as client:
        job = submit_slow(client, slow_digits)
        for ev in client.watch(job.job_id):
            if ev.kind == "running":
                break
        time.sleep(0.3)
        node.popen.send_signal(signal.SIGTERM)
        assert node.popen.wait(60) == 0
        done = client.job(job.job_id).tasks_done
        assert 1 <= done < 12  # it finished the task it held, then took no more
        assert "draining" in node.log_tail(80)
        second = grid.start_node("node2", *node_args())
        for ev in client.watch(job.job_id, after_seq=0):
            if ev.kind == "completed" and ev.node.lower() != "" and ev.tasks_done > done:
                break
        # a second SIGTERM stops a drain: node2 is given one long task (every shard at once) so
        # it is surely mid-task when both come (with the 12 short ones, the task it held could
        # end between the two signals and it would exit 0, drained)
        client.cancel(job.job_id)
        whole = client.submit_inference(
            slow_digits.model, slow_digits.inputs, shard_rows=12_000, batch_size=BATCH, device="cpu",
            verification=VerificationSpec(decoys=0),
        )  # fmt: skip
        for ev in client.watch(whole.job_id):
            if ev.kind == "running":
                break
        time.sleep(0.3)  # its input fetched, its worker computing
        second.popen.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in second.log_tail(80), 30, "node2 draining")
        second.popen.send_signal(signal.SIGTERM)
        assert second.popen.wait(10) == 130
        assert client.job(whole.job_id).tasks_done == 0  # stopped, not drained


@SHARED
def test_cli_submit_watch_result(grid: LocalGrid, digits: Assets, tmp_path: Path) -> None:
    with grid.client(Signer.generate()) as client:  # what the grid's nodes had done before this job
        done_before = {n.address.lower(): n.completed for n in client.nodes()}
    out = tmp_path / "cli_out.safetensors"
    env_key = tmp_path / "submitter.key"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tensorgrid.cli",
            "job",
            "submit",
            "--coordinator",
            grid.target,
            "--key",
            str(env_key),
            "--model",
            str(digits.model),
            "--inputs",
            str(digits.inputs),
            "--shard-rows",
            "1000",
            "--batch-size",
            str(BATCH),
            "--device",
            "cpu",
            "--verification",  # no spot-checks: a check the other node ran would count among its done tasks
            "none",
            "--watch",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "succeeded" in proc.stdout
    assert_matches_local(out, digits)
    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "tensorgrid.cli",
            "job",
            "list",
            "--mine",
            "--coordinator",
            grid.target,
            "--key",
            str(env_key),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0 and "succeeded" in listing.stdout
    shown = next(line.split()[0] for line in listing.stdout.splitlines() if "succeeded" in line)  # "0123abcd4567.."

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tensorgrid.cli", "job", *args, "--coordinator", grid.target, "--key", str(env_key)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    status = cli("status", shown)  # the id as `job list` shows it is enough
    assert status.returncode == 0 and "succeeded" in status.stdout, status.stderr
    as_json = json.loads(cli("status", "--json", shown[:8]).stdout)
    assert as_json["state"] == "succeeded" and as_json["job_id"].startswith(shown.rstrip("."))
    assert [json.loads(line)["job_id"] for line in cli("list", "--json").stdout.splitlines()] == [as_json["job_id"]]
    refused = cli("status", "abc")
    assert refused.returncode != 0 and "not a job id" in refused.stderr
    unknown = cli("status", "f" * 12)
    assert unknown.returncode != 0 and "no job of" in unknown.stderr
    nodes = subprocess.run(
        [sys.executable, "-m", "tensorgrid.cli", "nodes", "--coordinator", grid.target, "--key", str(env_key)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert nodes.returncode == 0, nodes.stderr
    rows = [line.split() for line in nodes.stdout.splitlines() if line.startswith("0x")]
    assert sorted(row[0].lower() for row in rows) == sorted(done_before)  # the grid's two nodes
    assert all(row[1] == "cpu" for row in rows)
    assert sum(int(row[3]) - done_before[row[0].lower()] for row in rows) == 3  # the job's three shards
