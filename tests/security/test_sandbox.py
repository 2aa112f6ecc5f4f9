"""The sandbox every stranger's graph runs in: what a child can and cannot reach.

The primitive is driven with a test-only entry point (tests.security.sandbox_payload); the
node's worker and the coordinator's referee are driven through real processes. The isolation
tests run twice (the sandbox_start fixture): with the child exec'd, and forked by a zygote."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.exc import OperationalError

from coordinator.db import schema as s
from coordinator.services.runtime import REFEREE_LIMITS, REFEREE_NICE
from node.main import PASSWORD_ENV, read_password
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.sandbox import Isolation, SandboxFailure, SandboxLimits, WarmSandbox, run_once
from tensorgrid.sandbox.confine import landlock_abi
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import JobState
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.integration.adversaries import Pool, SimNode
from tests.integration.conftest import BATCH, Assets, node_args
from tests.procs import running

PAYLOAD = "tests.security.sandbox_payload"
LIMITS = SandboxLimits(memory_bytes=256 << 20, time_s=30.0)


def _run(request: dict[str, object], limits: SandboxLimits = LIMITS, **kw: object) -> dict[str, object]:
    return run_once(PAYLOAD, request, limits, **kw)  # type: ignore[arg-type]


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
def test_child_gets_a_scrubbed_environment_and_its_own_scratch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "hunter2")
    monkeypatch.setenv("TENSORGRID_NODE_KEYSTORE", "/somewhere/node-key.json")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-jobs")
    seen = _run({"act": "env"}, scratch_root=tmp_path)
    env = seen["env"]
    assert isinstance(env, dict)
    assert not [k for k in env if k.startswith("TENSORGRID_")], env
    assert "hunter2" not in str(env) and "AWS_SECRET_ACCESS_KEY" not in env
    scratch = Path(str(seen["scratch"]))
    assert seen["cwd"] == str(scratch) and env["HOME"] == env["TMPDIR"] == str(scratch)
    assert scratch.parent == tmp_path.resolve() and not scratch.exists()  # deleted afterwards


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
def test_child_runs_torch_on_the_threads_its_limits_give() -> None:
    # The coordinator's referee runs on one thread by default: on busy cores, several torch
    # threads wait for each other (benchmarks.scaling).
    payload = "tests.security.torch_payload"
    for threads in (1, 3):
        seen = run_once(payload, {}, SandboxLimits(memory_bytes=1 << 30, time_s=60.0, threads=threads))
        assert seen["threads"] == threads


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
def test_child_runs_at_the_lower_cpu_priority_its_limits_give() -> None:
    # The coordinator's referee yields the CPU to the calls the coordinator is answering.
    assert REFEREE_LIMITS.nice == REFEREE_NICE > 0
    ours = os.nice(0)
    assert _run({"act": "nice"})["nice"] == ours  # by default: the parent's
    lowered = SandboxLimits(memory_bytes=256 << 20, time_s=30.0, nice=5)
    assert _run({"act": "nice"}, lowered)["nice"] == min(19, ours + 5)


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
def test_child_imports_at_the_parents_priority_and_runs_the_program_at_its_own() -> None:
    # The trusted start (interpreter, torch's import) is not what may wait: lowered before it,
    # the referee took a minute to start on a loaded machine. Every thread is lowered before the
    # program runs, those the imports started too (a thread's nice is its own on Linux).
    ours = os.nice(0)
    lowered = SandboxLimits(memory_bytes=256 << 20, time_s=30.0, nice=5)
    seen = run_once("tests.security.prepare_payload", {}, lowered)
    assert seen["prepare_nice"] == ours
    nices = seen["thread_nices"]
    assert isinstance(nices, list) and len(nices) >= 2, seen  # the main thread and prepare's
    assert set(nices) == {min(19, ours + 5)}, seen


def _autogroups() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
@pytest.mark.skipif(not _autogroups(), reason="this kernel does not group tasks by session")
def test_child_lowers_its_sessions_autogroup_too() -> None:
    # A child leads its own session; with autogroups the kernel shares the CPU between
    # sessions first, so os.nice alone would leave the referee an equal share beside the
    # coordinator answering calls. Its group's nice is lowered with it (ours is untouched).
    # A process still in the kernel's first group (no session was ever started above it, as in
    # some CI containers) reads an empty file: the child's group differs from it all the same.
    ours = Path("/proc/self/autogroup").read_text()
    our_group = ours.split()[0] if ours.strip() else "(the first group)"
    assert _run({"act": "autogroup"})["autogroup"].split()[-1] == "0"  # type: ignore[union-attr]
    lowered = SandboxLimits(memory_bytes=256 << 20, time_s=30.0, nice=5)
    seen = str(_run({"act": "autogroup"}, lowered)["autogroup"])
    assert seen.split()[-2:] == ["nice", "5"], seen
    assert seen.split()[0] != our_group  # its own group, not ours
    assert Path("/proc/self/autogroup").read_text() == ours


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
def test_child_inherits_no_file_descriptors(tmp_path: Path) -> None:
    held = os.open(tmp_path / "open-in-parent", os.O_CREAT | os.O_RDWR)
    os.set_inheritable(held, True)  # even one marked inheritable stays behind
    try:
        fds = _run({"act": "fds"})["fds"]
    finally:
        os.close(held)
    assert isinstance(fds, list) and set(fds) <= {0, 1, 2, 3, 4}, fds  # stdio, the protocol pipe, listdir's own


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
@pytest.mark.skipif(landlock_abi() < 1, reason="this kernel has no Landlock: file confinement is documented as missing")
def test_child_reads_only_the_paths_it_was_given(tmp_path: Path) -> None:
    secret = tmp_path / "node-key.json"
    secret.write_text("keystore")
    granted = tmp_path / "granted"
    granted.mkdir()
    (granted / "input").write_text("input rows")
    iso = Isolation().with_paths(readable=[granted])
    assert _run({"act": "read", "path": str(granted / "input")}, isolation=iso) == {"data": "input rows"}
    with pytest.raises(SandboxFailure) as refused:
        _run({"act": "read", "path": str(secret)}, isolation=iso)
    assert refused.value.kind == "error" and "PermissionError" in str(refused.value)
    with pytest.raises(SandboxFailure, match="PermissionError"):
        _run({"act": "read", "path": f"/proc/{os.getppid()}/environ"}, isolation=iso)  # not even its parent's


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
@pytest.mark.skipif(landlock_abi() < 1, reason="this kernel has no Landlock: file confinement is documented as missing")
def test_a_lending_child_reads_the_files_of_the_request_at_hand_and_no_other(tmp_path: Path) -> None:
    """The coordinator's referee runs one stranger's program after another: each request's
    files are lent to it for that request, so it never reads another submitter's blobs."""
    store = tmp_path / "blobs"
    store.mkdir()
    mine, theirs = store / "aa", store / "bb"
    mine.write_text("this job's rows")
    theirs.write_text("another submitter's rows")
    child = WarmSandbox(PAYLOAD, LIMITS, scratch_root=store / "sandbox", lend=True)
    try:
        # the request names the store's path; the child reads it where it was lent
        assert child.call({"act": "read", "path": str(mine)}, inputs=[mine]) == {"data": "this job's rows"}
        for other in (theirs, mine):  # another blob, and this one once its request is over
            with pytest.raises(SandboxFailure, match="PermissionError"):
                child.call({"act": "read", "path": str(other)})
        with pytest.raises(SandboxFailure, match="PermissionError"):  # lent for reading only
            child.call({"act": "append", "path": str(mine), "text": "forged"}, inputs=[mine])
        assert mine.read_text() == "this job's rows"
        assert list((store / "sandbox").glob("lent-*/*")) == []  # every loan taken back
    finally:
        child.close()
    assert list((store / "sandbox").glob("lent-*")) == []


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
def test_child_cannot_open_a_socket_to_a_local_listener() -> None:
    status = _run({"act": "status"})
    if status.get("network") != "isolated":  # printed by pytest -rs: the reason the kernel gave
        pytest.skip(f"this kernel refuses a new network namespace: {status.get('network_reason')}")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        shared = _run({"act": "connect", "port": port}, isolation=Isolation(network="shared"))
        assert shared == {"connected": True}  # the listener is reachable without the sandbox
        with pytest.raises(SandboxFailure) as refused:
            _run({"act": "connect", "port": port})
    assert refused.value.kind == "error" and "unreachable" in str(refused.value).lower()


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
def test_child_is_stopped_at_its_memory_limit_and_cannot_lift_it() -> None:
    limits = SandboxLimits(memory_bytes=64 << 20, time_s=30.0)
    with pytest.raises(SandboxFailure) as over:
        _run({"act": "alloc", "bytes": 8 << 30}, limits)
    assert over.value.kind == "out_of_memory" and over.value.over_limit
    assert "MemoryError" in str(over.value)
    assert _run({"act": "alloc", "bytes": 16 << 20}, limits) == {"size": 16 << 20}  # within it: fine
    lifted = _run({"act": "rlimit"}, limits)
    assert lifted["lifted"] is False and int(str(lifted["hard"])) < 8 << 30


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
def test_child_is_killed_at_its_time_limit() -> None:
    started = time.monotonic()
    with pytest.raises(SandboxFailure) as late:
        _run({"act": "sleep", "seconds": 600}, SandboxLimits(time_s=1.0))
    assert late.value.kind == "timeout" and late.value.over_limit
    assert "time limit of 1s" in str(late.value)
    assert time.monotonic() - started < 60


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
def test_a_warm_sandbox_tells_the_cpu_time_of_each_call_not_its_wall_time(tmp_path: Path) -> None:
    """What the referee's reviews judge a program's speed by (Reviews._bounds): the CPU its child
    spent on the call, which waiting (for a core, here for a timer) does not add to; read before
    the kill of a call over its time limit too. Each thread of the caller reads its own call's."""
    child = WarmSandbox(PAYLOAD, LIMITS, scratch_root=tmp_path)
    try:
        child.call({"act": "spin", "seconds": 0.4})
        spun = child.last_cpu_s()
        assert spun is not None and spun >= 0.35, spun  # the child's own clock: not load-bound
        child.call({"act": "sleep", "seconds": 0.4})
        slept = child.last_cpu_s()
        assert slept is not None and slept < 0.2, slept
        with pytest.raises(SandboxFailure, match="time limit"):
            child.call({"act": "spin", "seconds": 30}, time_s=1.0)
        over = child.last_cpu_s()
        # How much of a core a wall-time limit leaves the child depends on the machine's load;
        # that it was read (not None) and is this call's (not the sleep's, ~0) does not.
        assert over is not None and over > slept and over <= 1.0 * child.threads + 0.5, over
        other: list[float | None] = []
        thread = threading.Thread(target=lambda: other.append(child.last_cpu_s()))
        thread.start()
        thread.join()
        assert other == [None]  # that thread made no call
        assert child.threads >= 1
    finally:
        child.close()


def test_closing_a_warm_sandbox_kills_a_child_still_starting(tmp_path: Path) -> None:
    # The coordinator warms its referee at start and closes it at stop: a stop must not wait
    # for the child's start-up (torch's import), which took seconds more per stop on a loaded machine.
    child = WarmSandbox("tests.security.slow_start_payload", LIMITS, scratch_root=tmp_path)
    errors: list[BaseException] = []

    def warm() -> None:
        try:
            child.warm()
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            errors.append(e)

    warming = threading.Thread(target=warm, daemon=True)
    warming.start()
    deadline = time.monotonic() + 30
    while child._starting is None and time.monotonic() < deadline:  # spawned, not greeted (it sleeps 60 s)
        time.sleep(0.01)
    assert child._starting is not None, "the child never started"
    started = time.monotonic()
    child.close()
    warming.join(20)
    assert not warming.is_alive() and time.monotonic() - started < 20
    assert len(errors) == 1 and isinstance(errors[0], SandboxFailure), errors
    assert "failed to start" in str(errors[0]) and "SIGKILL" in str(errors[0])
    assert child._child is None and not list(tmp_path.iterdir())  # nothing kept, its scratch deleted


def _warm_quietly(child: WarmSandbox) -> None:
    with contextlib.suppress(SandboxFailure):  # closed under it: the failure the close causes
        child.warm()


def test_a_closed_warm_sandbox_starts_no_child_whenever_the_close_lands(tmp_path: Path) -> None:
    # The coordinator's stop closes its referee while a thread may be about to warm it or to
    # start a fresh child for a call: no child may outlive the close, whichever step it lands on.
    closed_first = WarmSandbox(PAYLOAD, LIMITS, scratch_root=tmp_path / "first")
    closed_first.close()
    for start in (closed_first.warm, lambda: closed_first.call({"act": "status"})):
        with pytest.raises(SandboxFailure, match="closed"):
            start()
    assert running(os.getpid(), PAYLOAD) == []
    for delay in (0.0, 0.002, 0.01, 0.05, 0.2):
        child = WarmSandbox(PAYLOAD, LIMITS, scratch_root=tmp_path / f"at-{delay}")
        warming = threading.Thread(target=_warm_quietly, args=(child,), daemon=True)
        warming.start()
        time.sleep(delay)
        child.close()
        warming.join(30)
        assert not warming.is_alive()
        assert running(os.getpid(), PAYLOAD) == [], f"a child outlived a close {delay}s after the warm began"
        assert child._child is None


@pytest.mark.usefixtures("sandbox_start")  # exec'd and forked by the zygote
def test_outputs_leave_the_scratch_directory_only_when_named(tmp_path: Path) -> None:
    dest = tmp_path / "result.txt"
    assert _run({"act": "write", "text": "rows"}, outputs={"out.txt": dest}) == {"written": True}
    assert dest.read_text() == "rows"


# -- the node's password -------------------------------------------------------------------


def test_password_file_is_read_and_the_environment_is_not_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    pw = tmp_path / "password"
    pw.write_text("correct horse\n")
    assert read_password(argparse.Namespace(password_file=pw)) == "correct horse"
    assert PASSWORD_ENV not in os.environ


def test_password_from_the_environment_is_dropped_once_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert read_password(argparse.Namespace(password_file=None)) == "from-env"
    assert PASSWORD_ENV not in os.environ  # no child started afterwards can inherit it


# -- hostile graphs against real node and coordinator processes ----------------------------


class _Hog(torch.nn.Module):
    """A valid program that asks for a 16 GiB tensor whatever its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones(1 << 16, 1 << 16).sum()


class _Slow(torch.nn.Module):
    """A valid program far slower than a small referee time limit allows, in a handful of
    graph nodes: a loop of 1000 small layers cost ~11 CPU-s to export and ~6 to load each time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.repeat(1, 16)  # 64 → 1024 columns
        square = wide.unsqueeze(2) * wide.unsqueeze(1)  # a 1024×1024 matrix per row
        # ~9 GFLOP a row: a check's 4 rows took 0.4 s on one fast core (a batched matmul runs near
        # the core's peak; 1000 small layers did 8 GFLOP in 0.3 s), well over 0.2 s even with the
        # program warm (the referee keeps it loaded from intake's probe). Not more: intake's
        # probe runs ~20 rows and the honest node 12.
        for _ in range(4):
            square = torch.tanh(square @ square / 1024)
        return square.mean(dim=2)[:, :10]


def _db(grid: LocalGrid) -> Engine:
    return create_engine(f"sqlite:///{grid.root / 'coordinator' / 'coordinator.db'}")


@pytest.mark.integration
@pytest.mark.timeout(600)  # real daemons start sandboxed workers (torch imports) on a loaded machine
def test_a_huge_allocation_fails_clearly_and_the_node_keeps_serving(
    make_grid: Callable[..., LocalGrid], digits: Assets, tmp_path: Path
) -> None:
    hog = tmp_path / "hog.pt2"
    export_program(_Hog().eval(), (torch.randn(4, 64),), hog, dynamic_batch=False)
    grid = make_grid()
    grid.start_coordinator()
    node = grid.start_node("node", *node_args(1), "--memory-gib", "1")
    grid.wait_for_nodes(1)
    with Client(grid.target, Signer.generate()) as client:
        # Verification off: intake's probe (in the coordinator's sandbox) would refuse the hog
        # before any node saw it; this test is about the node's own limits.
        bad = client.submit_inference(
            hog,
            digits.inputs,
            shard_rows=1000,
            batch_size=4,
            device="cpu",
            max_attempts=1,
            verification=VerificationSpec(mode="none"),
        )
        final = client.wait(bad.job_id)
        assert final.state == JobState.FAILED
        assert "out_of_memory" in final.error or "memory" in final.error.lower(), final.error
        assert node.alive, node.log_tail()
        good = client.submit_inference(digits.model, digits.inputs, shard_rows=1000, batch_size=BATCH, device="cpu")
        assert client.wait(good.job_id).state == JobState.SUCCEEDED
    assert node.alive


@pytest.mark.integration
@pytest.mark.timeout(600)  # real daemons start sandboxed workers (torch imports) on a loaded machine
def test_the_referee_over_its_time_limit_blames_no_one_and_the_coordinator_keeps_serving(
    make_grid: Callable[..., LocalGrid], tmp_path: Path
) -> None:
    model, inputs = tmp_path / "slow.pt2", tmp_path / "rows.safetensors"
    export_program(_Slow().eval(), (torch.randn(4, 64),), model)
    save_tensors({"pixels": torch.rand(8, 64)}, inputs)
    grid = make_grid("--referee-time-s", "0.2", "--check-wait-ms", "60000")
    coordinator = grid.start_coordinator()
    policy = VerificationSpec(spot_rows=4, canary_rate=0.0)
    with Client(grid.target, Signer.generate()) as client:
        job = client.submit_inference(model, inputs, shard_rows=4, batch_size=4, device="cpu", verification=policy)
        pool, work = Pool(), tmp_path / "sim"
        work.mkdir()
        cheat, honest = SimNode(grid.target, "noise", pool, work), SimNode(grid.target, "honest", pool, work)

        async def until_the_referee_gave_up() -> list[tuple[str, str]]:
            stop = asyncio.Event()
            runs = [asyncio.create_task(n.run(stop)) for n in (cheat, honest)]
            deadline = time.monotonic() + 180
            try:
                while not (failed := _failed_rulings(grid)):
                    assert time.monotonic() < deadline, "no ruling was attempted"
                    assert coordinator.alive, coordinator.log_tail()
                    await asyncio.sleep(0.5)
                return failed
            finally:
                stop.set()
                await asyncio.gather(*runs, return_exceptions=True)

        failed = asyncio.run(until_the_referee_gave_up())
        assert all("time limit of 0.2s" in error for _, error in failed), failed
        assert coordinator.alive, coordinator.log_tail()
        nodes = client.nodes()  # still serving
        assert all(n.caught == 0 for n in nodes)  # nobody was blamed on a ruling that did not run
        assert client.job(job.job_id).state != JobState.FAILED
    engine = _db(grid)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.slashes)).scalar() == 0
    engine.dispose()


def _failed_rulings(grid: LocalGrid) -> list[tuple[str, str]]:
    engine = _db(grid)
    try:
        with engine.connect() as conn:
            r = s.referee_rulings.c
            rows = conn.execute(select(r.check_id, r.error).where(r.state == "failed")).all()
    except OperationalError:  # the coordinator has not made its tables yet
        return []
    finally:
        engine.dispose()
    return [(str(a), str(b)) for a, b in rows]
