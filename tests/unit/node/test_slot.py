"""A slot holds one lease ahead: the next task's input is fetched while the current one runs,
the result goes in beside the next run, heartbeats list the lease ahead, a revoked one never
runs, draining gives it back, and the worker's limit is shortened by the wait ahead. A long
task's lease ahead is asked for near its end, so a job's last task goes to the node free first."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node import slot as slot_module
from node.agent import Agent
from node.cache import BlobCache
from node.config import AgentConfig
from node.executor import TaskOutcome, TaskRequest
from node.slot import Slot
from tensorgrid.crypto import Signer
from tensorgrid.nodeclient import Submitted
from tensorgrid.rpc import LEASE_WAIT_MS, MAX_LEASE_WAIT_MS
from tensorgrid.types import BlobRef, Capabilities, Lease, Receipt, TaskError

RUN_S = 0.05


def blob(i: int) -> tuple[BlobRef, bytes]:
    data = f"input {i}".encode()
    return BlobRef(hashlib.sha256(data).hexdigest(), len(data)), data


class Grid:
    """A coordinator in memory: `tasks` leases, granted by LeaseTasks or with results."""

    def __init__(self, tasks: int, time_limit_ms: int = 600_000, fetch_s: float = 0.0) -> None:
        self.queue = [
            Lease("j" * 64, f"{i:064x}", 1, 0, "inference", None, blob(i)[0], time_limit_ms=time_limit_ms)
            for i in range(tasks)
        ]
        self.blobs = {blob(i)[0].sha256: blob(i)[1] for i in range(tasks)}
        self.fetch_s = fetch_s
        self.log: list[tuple[str, str]] = []  # (event, task index)
        self.heartbeat_s = 5.0
        self.lease_calls = 0
        self.reported: list[tuple[str, str]] = []

    def _grant(self, n: int) -> list[Lease]:
        got, self.queue = self.queue[:n], self.queue[n:]
        self.log += [("granted", str(int(x.task_id, 16))) for x in got]
        return got

    async def lease(self, max_tasks: int = 1, wait_ms: int = 0) -> tuple[list[Lease], int]:
        self.lease_calls += bool(self.queue)  # calls that found work
        return self._grant(max_tasks), 0 if self.queue else 500

    def fetch(self, ref: BlobRef, offset: int = 0) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            await asyncio.sleep(self.fetch_s)
            self.log.append(("fetched", self.blobs[ref.sha256].decode().split()[1]))
            yield self.blobs[ref.sha256][offset:]

        return chunks()

    def sign(self, lease: Lease, output: BlobRef, commitment: str = "") -> Receipt:
        return Receipt(lease.job_id, lease.task_id, lease.attempt, lease.input.sha256, output.sha256)

    async def submit_and_lease(self, receipt: Receipt, size: int, data: object, want: int = 0) -> Submitted:
        self.log.append(("submitted", str(int(receipt.task_id, 16))))
        return Submitted(True, "", [], self._grant(want), 0)

    async def report(self, task_id: str, attempt: int, error: TaskError, timeout: float | None = None) -> bool:
        self.reported.append((str(int(task_id, 16)), error.kind.value))
        return True

    async def close(self) -> None:
        pass


class Worker:
    """An executor that sleeps run_s and writes an output; remembers what it was asked and when."""

    def __init__(self, grid: Grid, agent: Agent, run_s: float = RUN_S, first_load_s: float = 0.0) -> None:
        self.grid, self.agent, self.run_s = grid, agent, run_s
        self.load_s = first_load_s  # the first run loads the program for this long first
        self.requests: list[TaskRequest] = []
        self.active_seen: list[set[str]] = []
        self.started: dict[str, float] = {}  # task index → when its run began (monotonic)

    async def run(self, request: TaskRequest) -> TaskOutcome:
        self.requests.append(request)
        index = Path(request.input_path).read_bytes().decode().split()[1]
        self.grid.log.append(("started", index))
        self.started[index] = time.monotonic()
        load_s, self.load_s = self.load_s, 0.0
        await asyncio.sleep(load_s + self.run_s)
        self.active_seen.append({str(int(t, 16)) for t in self.agent._active})  # what a heartbeat would list
        Path(request.output_path).write_bytes(b"out " + index.encode())
        self.grid.log.append(("ran", index))
        return TaskOutcome(ok=True, rows=1, seconds=self.run_s, load_seconds=load_s)

    async def cancel(self) -> None:
        pass

    def warm_up(self, kind: str) -> None:
        del kind  # the real executor starts the worker the task needs here


def make(tmp_path: Path, grid: Grid, run_s: float = RUN_S, first_load_s: float = 0.0) -> tuple[Agent, Worker]:
    a = Agent(
        AgentConfig("127.0.0.1:1", tmp_path / "work"),
        Signer.generate(),
        Capabilities(device_kind="cpu", memory_bytes=1 << 30, cpu_cores=1),
        BlobCache(tmp_path / "cache", 1 << 20),
    )
    a.client = grid  # type: ignore[assignment]
    a.config.work_dir.mkdir(parents=True, exist_ok=True)
    a._registered.set()
    return a, Worker(grid, a, run_s, first_load_s)


async def work(
    tmp_path: Path, grid: Grid, until: int, run_s: float = RUN_S, first_load_s: float = 0.0
) -> tuple[Agent, Worker]:
    a, worker = make(tmp_path, grid, run_s, first_load_s)
    slot = Slot(a, worker)  # type: ignore[arg-type]
    run = asyncio.create_task(slot.run())
    while a.completed < until:
        await asyncio.sleep(0.005)
    a.drain()
    await asyncio.wait_for(run, 5)
    return a, worker


def at(log: list[tuple[str, str]], event: str, index: int) -> int:
    return log.index((event, str(index)))


def test_the_next_input_is_fetched_while_a_task_runs(tmp_path: Path) -> None:
    grid = Grid(8)
    a, worker = asyncio.run(work(tmp_path, grid, until=8))
    log = grid.log
    assert [e for e in log if e[0] == "ran"] == [("ran", str(i)) for i in range(8)]
    for i in range(2, 8):  # from the third task on (the first run is measured first)
        assert at(log, "fetched", i) < at(log, "ran", i - 1), log  # fetched before its turn came
        assert at(log, "started", i) < at(log, "submitted", i - 1), log  # the result went in beside it
    assert grid.lease_calls == 2  # the first lease and the first one ahead: the rest came with results
    assert a.completed == 8 and not a._active


def test_never_more_than_one_lease_ahead_and_heartbeats_list_it(tmp_path: Path) -> None:
    grid = Grid(8)
    _, worker = asyncio.run(work(tmp_path, grid, until=8))
    started: set[str] = set()
    granted: set[str] = set()
    for event, i in grid.log:
        if event == "granted":
            granted.add(i)
        elif event == "started":
            started.add(i)
        assert len(granted - started) <= 2, grid.log  # the one about to start and one ahead
    # While task 3 ran, the lease ahead of it (4) was listed as active, as heartbeats send them.
    assert "4" in worker.active_seen[3]


def test_no_lease_ahead_when_a_run_is_long_against_the_limit(tmp_path: Path) -> None:
    grid = Grid(4, time_limit_ms=int(RUN_S * 1000 * 5))  # a run is 20% of the limit: above the share
    asyncio.run(work(tmp_path, grid, until=4))
    for i in range(1, 4):
        assert at(grid.log, "granted", i) > at(grid.log, "ran", i - 1)  # asked for with the result, as before


def test_the_worker_limit_is_shortened_by_the_wait_ahead(tmp_path: Path) -> None:
    grid = Grid(4)
    _, worker = asyncio.run(work(tmp_path, grid, until=4))
    limits = [r.time_limit_s for r in worker.requests]
    assert limits[0] > 599.99  # run at once
    assert all(599.0 < x < 600.0 - RUN_S / 2 for x in limits[3:]), limits  # waited about one run ahead


def test_draining_gives_the_lease_ahead_back(tmp_path: Path) -> None:
    grid = Grid(20)
    a, _ = asyncio.run(work(tmp_path, grid, until=4))
    assert grid.reported and all(kind == "released" for _, kind in grid.reported)
    submitted = {i for e, i in grid.log if e == "submitted"}
    granted = {i for e, i in grid.log if e == "granted"}
    assert granted == submitted | {i for i, _ in grid.reported}  # every lease handed in or given back
    assert not a._active


def test_a_revoked_lease_ahead_never_runs(tmp_path: Path) -> None:
    async def scenario() -> tuple[Grid, Worker]:
        grid = Grid(6, fetch_s=0.01)
        a, worker = make(tmp_path, grid)
        run = asyncio.create_task(Slot(a, worker).run())  # type: ignore[arg-type]
        while a.completed < 2:
            await asyncio.sleep(0.002)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # revoke the first lease held ahead
            ahead = [(t, e) for t, e in a._active.items() if ("started", str(int(t, 16))) not in grid.log]
            if ahead:
                task_id, (attempt, cancel) = ahead[0]
                a._revoked.add((task_id, attempt))
                await cancel()
                grid.log.append(("revoked", str(int(task_id, 16))))
                break
            await asyncio.sleep(0.001)
        while a.completed < 5:
            await asyncio.sleep(0.005)
        a.drain()
        await asyncio.wait_for(run, 5)
        return grid, worker

    grid, _ = asyncio.run(scenario())
    revoked = [i for e, i in grid.log if e == "revoked"]
    assert revoked and ("started", revoked[0]) not in grid.log
    assert (revoked[0], "released") not in grid.reported  # not the node's to give back any more


def test_a_long_tasks_lease_ahead_comes_near_its_end_and_its_input_still_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slot_module, "AHEAD_LEAD_S", 0.1)
    run_s = 0.4
    grid = Grid(4)
    granted: dict[str, float] = {}
    grant = grid._grant

    def timed(n: int) -> list[Lease]:
        got = grant(n)
        granted.update((str(int(x.task_id, 16)), time.monotonic()) for x in got)
        return got

    grid._grant = timed  # type: ignore[method-assign]
    # the first run also loads the program: the next, warm, is as long as the first less that load
    _, worker = asyncio.run(work(tmp_path, grid, until=4, run_s=run_s, first_load_s=run_s))
    log = grid.log
    for i in (2, 3):  # the first run is measured first; the second task comes with the first result
        assert granted[str(i)] - worker.started[str(i - 1)] > run_s / 2, (granted, worker.started)  # not at once
        assert at(log, "fetched", i) < at(log, "ran", i - 1), log  # still here before its turn came
        assert at(log, "started", i) < at(log, "submitted", i - 1), log  # the result went in beside it
    limits = [r.time_limit_s for r in worker.requests]
    assert all(x > 600.0 - run_s / 2 for x in limits), limits  # held ahead for about the lead, not a run


def test_a_jobs_last_task_goes_to_the_node_free_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """4 tasks on 2 nodes, the second finishing just after the first: each runs 2. Leasing ahead
    as a task began, the first node took the last task behind its own run and the other idled."""
    monkeypatch.setattr(slot_module, "AHEAD_LEAD_S", 0.05)

    async def scenario() -> list[Worker]:
        grid = Grid(4)
        pairs = [make(tmp_path / name, grid, run_s) for name, run_s in (("a", 0.3), ("b", 0.33))]
        runs = [asyncio.create_task(Slot(a, w).run()) for a, w in pairs]  # type: ignore[arg-type]
        while sum(a.completed for a, _ in pairs) < 4:
            await asyncio.sleep(0.005)
        for a, _ in pairs:
            a.drain()
        await asyncio.wait_for(asyncio.gather(*runs), 5)
        return [w for _, w in pairs]

    first, second = asyncio.run(scenario())
    assert sorted(first.started) == ["0", "2"] and sorted(second.started) == ["1", "3"], (first.started, second.started)


class IdleGrid(Grid):
    """No work: LeaseTasks holds each call for the wait it asks, as the coordinator's long poll does."""

    def __init__(self) -> None:
        super().__init__(0)
        self.waits: list[int] = []

    async def lease(self, max_tasks: int = 1, wait_ms: int = 0) -> tuple[list[Lease], int]:
        self.waits.append(wait_ms)
        await asyncio.sleep(wait_ms / 1000)
        return [], 500


def test_an_idle_slot_long_polls_the_shared_wait_and_draining_ends_the_poll_at_once(tmp_path: Path) -> None:
    """An idle slot asks LeaseTasks to hold it LEASE_WAIT_MS (25 s), the wait the coordinator's
    cap allows; a drain does not wait for that poll to end."""
    grid = IdleGrid()

    async def scenario() -> float:
        a, worker = make(tmp_path, grid)
        run = asyncio.create_task(Slot(a, worker).run())  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        a.drain()
        await asyncio.wait_for(run, 5)
        return time.monotonic() - started

    drained_in = asyncio.run(scenario())
    assert grid.waits == [LEASE_WAIT_MS] and LEASE_WAIT_MS <= MAX_LEASE_WAIT_MS
    assert drained_in < 1.0, drained_in


def test_a_timeout_whose_limit_waiting_ahead_shortened_is_the_nodes_own_failure() -> None:
    """Not a claim that the program is too slow (the referee measures the task's whole limit): a
    run whose lease waited ahead more than a tenth of its limit reports an execution error."""
    from tensorgrid.types import ErrorKind

    timeout = TaskOutcome.failed(ErrorKind.TIMEOUT, "the task exceeded its time limit of 6s")
    own = slot_module._shortened(timeout, 10.0, 4.0)
    assert own.error is not None and own.error.kind == ErrorKind.EXECUTION
    assert "waited 4.0s ahead of its 10s" in own.error.message
    assert slot_module._shortened(timeout, 10.0, 0.5) == timeout  # the program's: a claim the referee judges
    crashed = TaskOutcome.failed(ErrorKind.CRASHED, "the worker died")
    assert slot_module._shortened(crashed, 10.0, 4.0) == crashed
