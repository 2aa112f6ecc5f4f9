"""A long-polling LeaseTasks hears of work that appears while its first lease query runs (a
check opened by another node's result, a new job): it does not sleep out its whole wait,
during which a check assigned to it would expire and fall to the referee."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from coordinator.events import EventHub
from coordinator.services import scheduler as scheduler_module
from tensorgrid.crypto import Signer
from tensorgrid.rpc import LEASE_WAIT_MS, MAX_LEASE_WAIT_MS
from tensorgrid.spec import NoopSpec, canonical_json, job_id_for, spec_hash
from tests.unit.coordinator.test_storage import CPU, GPU

SUBMITTER = "0x" + "11" * 20


def test_work_that_appears_during_the_lease_query_ends_the_wait(db_url: str, tmp_path: Path) -> None:
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=db_url))
    node = Signer.generate()
    app.store.nodes.register_node(node.address, CPU, "0" * 64, app.runtime.now_ms(), 10**9, "n")
    raw = canonical_json(NoopSpec(tasks=1))
    job, tasks = app.intake.plan(raw, SUBMITTER, spec_hash(raw), job_id_for(SUBMITTER, spec_hash(raw)))
    real = app.store.tasks.lease_many
    calls = 0

    def racing(*args: Any, **kwargs: Any) -> Any:
        """The first query finds nothing; the job is committed, and its wake-up sent, as it returns."""
        nonlocal calls
        calls += 1
        out = real(*args, **kwargs)
        if calls == 1:
            app.store.jobs.create_job(job, tasks, app.runtime.now_ms())
            app.runtime.hub.work_available()
        return out

    app.store.tasks.lease_many = racing  # type: ignore[method-assign]

    async def scenario() -> tuple[int, float]:
        started = time.monotonic()
        leases, _ = await app.scheduler.lease(node.address, 1, 5_000)
        waited = time.monotonic() - started
        await app.stop()
        return len(leases), waited

    granted, waited = asyncio.run(scenario())
    assert granted == 1 and waited < 2.0, waited  # not the 5 s a lost wake-up costs


def test_idle_long_polls_share_one_look_at_an_empty_queue(db_url: str, tmp_path: Path) -> None:
    """Once a query found nothing and no task waits for anyone, lease queries skip the database
    until work is announced; the announced work is then leased at once."""
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=db_url))
    node = Signer.generate()
    app.store.nodes.register_node(node.address, CPU, "0" * 64, app.runtime.now_ms(), 10**9, "n")
    real = app.store.tasks.lease_many
    queries = 0

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal queries
        queries += len(args[0])
        return real(*args, **kwargs)

    app.store.tasks.lease_many = counted  # type: ignore[method-assign]

    async def scenario() -> tuple[int, int, int]:
        assert await app.scheduler.lease(node.address, 1, 0) == ([], 500)
        await _shared_check_done(app)
        for _ in range(20):
            assert await app.scheduler.lease(node.address, 1, 0) == ([], 500)
        skipped_to = queries
        raw = canonical_json(NoopSpec(tasks=1))
        job, tasks = app.intake.plan(raw, SUBMITTER, spec_hash(raw), job_id_for(SUBMITTER, spec_hash(raw)))
        app.store.jobs.create_job(job, tasks, app.runtime.now_ms())
        app.runtime.hub.work_available()
        leases, _ = await app.scheduler.lease(node.address, 1, 0)
        await app.stop()
        return skipped_to, queries, len(leases)

    skipped_to, total, granted = asyncio.run(scenario())
    assert skipped_to == 1  # twenty lease calls, one query
    assert total == 2 and granted == 1


async def _shared_check_done(app: Coordinator) -> None:
    """Until the shared look at the queue that a fruitless lease query started has finished (a
    fixed sleep lost the race to a fresh PostgreSQL connection on a loaded machine)."""
    deadline = time.monotonic() + 5.0
    while app.scheduler._idle_check is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def _waits_of(app: Coordinator) -> list[float]:
    """The timeouts the app's long polls wait for work with, from now on."""
    hub, waits = app.runtime.hub, []
    real = hub.wait_for_work

    async def recorded(timeout_s: float, signal: int | None = None) -> bool:
        waits.append(timeout_s)
        return await real(timeout_s, signal)

    hub.wait_for_work = recorded  # type: ignore[method-assign]
    return waits


def test_an_idle_long_poll_waits_the_whole_wait_and_new_work_wakes_it_at_once(db_url: str, tmp_path: Path) -> None:
    """On an empty queue a node's long poll sleeps the LEASE_WAIT_MS it asks for (25 s: idle
    nodes cost a fifth of the LeaseTasks they did at 5 s), capped at MAX_LEASE_WAIT_MS; a job
    queued meanwhile is leased at once, not at the end of the wait."""
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=db_url))
    node = Signer.generate()
    app.store.nodes.register_node(node.address, CPU, "0" * 64, app.runtime.now_ms(), 10**9, "n")
    waits = _waits_of(app)

    async def scenario() -> tuple[int, float, list[float]]:
        poll = asyncio.create_task(app.scheduler.lease(node.address, 1, LEASE_WAIT_MS))
        greedy = asyncio.create_task(app.scheduler.lease(node.address, 1, 10 * MAX_LEASE_WAIT_MS))
        await asyncio.sleep(0.5)
        assert not poll.done() and not greedy.done()
        greedy.cancel()
        asked = list(waits)
        raw = canonical_json(NoopSpec(tasks=1))
        job, tasks = app.intake.plan(raw, SUBMITTER, spec_hash(raw), job_id_for(SUBMITTER, spec_hash(raw)))
        started = time.monotonic()
        app.store.jobs.create_job(job, tasks, app.runtime.now_ms())
        app.runtime.hub.work_available(len(tasks))
        leases, _ = await poll
        woke = time.monotonic() - started
        await app.stop()
        return len(leases), woke, asked

    granted, woke, asked = asyncio.run(scenario())
    assert granted == 1 and woke < 1.0, woke
    assert LEASE_WAIT_MS == 25_000 and MAX_LEASE_WAIT_MS == 30_000
    # the whole wait at once (less the lease query and the shared look at the queue), and the cap
    assert sorted(asked) == pytest.approx([LEASE_WAIT_MS / 1000, MAX_LEASE_WAIT_MS / 1000], abs=0.5), asked


def test_a_long_poll_beside_tasks_it_may_not_take_looks_again_every_few_seconds(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a CUDA task waits, a CPU node's long poll does not sleep its whole wait: the idle
    watcher only runs on an empty queue, so work another replica queues (no wake-up here) is
    found when the poll looks again, every BUSY_RELOOK_S (shortened here) as when every wait was
    5 s, not 25 s later. So is work the node becomes eligible for (stake, a failed task's avoid window)."""
    monkeypatch.setattr(scheduler_module, "BUSY_RELOOK_S", 0.5)
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=db_url))
    node = Signer.generate()
    app.store.nodes.register_node(node.address, CPU, "0" * 64, app.runtime.now_ms(), 10**9, "n")

    def queue(spec: NoopSpec) -> None:  # as another replica does: no wake-up in this process
        raw = canonical_json(spec)
        job, tasks = app.intake.plan(raw, SUBMITTER, spec_hash(raw), job_id_for(SUBMITTER, spec_hash(raw)))
        app.store.jobs.create_job(job, tasks, app.runtime.now_ms())

    queue(NoopSpec(tasks=1, device="cuda"))

    async def scenario() -> tuple[int, float]:
        poll = asyncio.create_task(app.scheduler.lease(node.address, 1, LEASE_WAIT_MS))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        queue(NoopSpec(tasks=1))
        leases, _ = await poll
        found = time.monotonic() - started
        await app.stop()
        return len(leases), found

    granted, found = asyncio.run(scenario())
    assert granted == 1 and found < 3.0, found  # not the 25 s the node asked to wait


def test_work_for_n_tasks_wakes_n_waiters_the_longest_waiting_first() -> None:
    """A job of two tasks wakes two of five idle long polls, not all five; work for nodes the
    caller cannot count (a check for its drawn checker) wakes every one."""

    async def scenario() -> tuple[list[int], list[int], int]:
        hub = EventHub()
        woken: list[int] = []

        async def waiter(i: int) -> None:
            await hub.wait_for_work(5.0, hub.work_signal())
            woken.append(i)

        tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
        await asyncio.sleep(0.01)
        assert hub.work_waiters == 5
        hub.work_available(2)
        await asyncio.sleep(0.01)
        first = list(woken)
        hub.work_available(None)
        await asyncio.gather(*tasks)
        return first, woken, hub.work_waiters

    first, every, left = asyncio.run(scenario())
    assert first == [0, 1]
    assert sorted(every) == [0, 1, 2, 3, 4] and left == 0


def test_work_announced_before_the_wait_ends_it_at_once_and_a_wait_times_out() -> None:
    async def scenario() -> tuple[float, float, int]:
        hub = EventHub()
        signal = hub.work_signal()
        hub.work_available(0)  # announced while the lease query ran, for nobody waiting yet
        started = time.monotonic()
        await hub.wait_for_work(5.0, signal)
        missed = time.monotonic() - started
        started = time.monotonic()
        await hub.wait_for_work(0.05, hub.work_signal())
        return missed, time.monotonic() - started, hub.work_waiters

    missed, timed_out, left = asyncio.run(scenario())
    assert missed < 0.5 and 0.04 < timed_out < 1.0 and left == 0


def test_a_woken_long_poll_that_may_not_take_the_work_passes_the_wake_up_on(db_url: str, tmp_path: Path) -> None:
    """A CUDA job of one task wakes the longest-waiting long poll, here a CPU node's: it finds
    nothing it may take and wakes others in its place, so the CUDA node leases the task at
    once instead of when its own wait ends (a mixed fleet, or unstaked nodes and a priced job)."""
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=db_url))
    cpus = [Signer.generate() for _ in range(3)]
    gpu = Signer.generate()
    for i, (n, caps) in enumerate([(c, CPU) for c in cpus] + [(gpu, GPU)]):
        app.store.nodes.register_node(n.address, caps, f"{i:064x}", app.runtime.now_ms(), 10**9, f"n{i}")

    async def scenario() -> list[tuple[str, int, float]]:
        started = time.monotonic()

        async def poll(node: Signer, name: str) -> tuple[str, int, float]:
            leases, _ = await app.scheduler.lease(node.address, 1, 4_000)
            return name, len(leases), time.monotonic() - started

        polls = []
        for i, c in enumerate(cpus):  # the CPU nodes wait longest
            polls.append(asyncio.create_task(poll(c, f"cpu{i}")))
            await asyncio.sleep(0.02)
        polls.append(asyncio.create_task(poll(gpu, "gpu")))
        await asyncio.sleep(0.1)
        assert app.runtime.hub.work_waiters == 4
        raw = canonical_json(NoopSpec(tasks=1, device="cuda"))
        job, tasks = app.intake.plan(raw, SUBMITTER, spec_hash(raw), job_id_for(SUBMITTER, spec_hash(raw)))
        app.store.jobs.create_job(job, tasks, app.runtime.now_ms())
        app.runtime.hub.work_available(len(tasks))
        outcomes = await asyncio.gather(*polls)
        await app.stop()
        return outcomes

    outcomes = asyncio.run(scenario())
    (gpu_outcome,) = [o for o in outcomes if o[0] == "gpu"]
    assert gpu_outcome[1] == 1 and gpu_outcome[2] < 2.0, outcomes  # not the 4 s its wait would have slept
    assert all(n == 0 for name, n, _ in outcomes if name != "gpu")


def test_a_relay_wakes_each_waiter_left_asleep_at_most_once() -> None:
    """Relays grow (two per step) but stop once every waiter the announcement left asleep was tried."""

    async def scenario() -> tuple[list[int], int, int]:
        hub = EventHub()
        woken: list[int] = []

        async def waiter(i: int) -> None:
            if await hub.wait_for_work(0.5, hub.work_signal()):
                woken.append(i)

        tasks = [asyncio.create_task(waiter(i)) for i in range(6)]
        await asyncio.sleep(0.01)
        hub.work_available(1)
        relayed = [hub.relay() for _ in range(4)]
        await asyncio.sleep(0.01)
        left = hub.relay_left
        await asyncio.gather(*tasks)
        return relayed, len(woken), left

    relayed, woken, left = asyncio.run(scenario())
    assert relayed == [2, 2, 1, 0] and woken == 6 and left == 0


def test_idle_watcher_wakes_as_many_long_polls_as_another_replica_queued_tasks(db_url: str, tmp_path: Path) -> None:
    """Long polls answered from the idle memo do not each look again: one watcher does, and
    wakes as many of them as there are tasks that were queued without a wake-up here (by
    another replica); those lease them, the others go on waiting."""
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=db_url))
    nodes = [Signer.generate() for _ in range(4)]
    for i, n in enumerate(nodes):
        app.store.nodes.register_node(n.address, CPU, f"{i:064x}", app.runtime.now_ms(), 10**9, f"n{i}")
    queries = 0
    real = app.store.tasks.lease_many

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal queries
        queries += len(args[0])
        return real(*args, **kwargs)

    app.store.tasks.lease_many = counted  # type: ignore[method-assign]

    async def scenario() -> tuple[list[tuple[int, float]], int]:
        assert await app.scheduler.lease(nodes[0].address, 1, 0) == ([], 500)
        await _shared_check_done(app)  # the queue is empty
        started = time.monotonic()

        async def poll(node: Signer) -> tuple[int, float]:
            leases, _ = await app.scheduler.lease(node.address, 1, 4_000)
            return len(leases), time.monotonic() - started

        polls = [asyncio.create_task(poll(n)) for n in nodes]
        await asyncio.sleep(0.1)
        assert app.runtime.hub.work_waiters == 4
        raw = canonical_json(NoopSpec(tasks=2))
        job, tasks = app.intake.plan(raw, SUBMITTER, spec_hash(raw), job_id_for(SUBMITTER, spec_hash(raw)))
        app.store.jobs.create_job(job, tasks, app.runtime.now_ms())  # no work_available: another replica's
        outcomes = await asyncio.gather(*polls)
        await app.stop()
        return sorted(outcomes, key=lambda x: x[1]), queries

    outcomes, asked = asyncio.run(scenario())
    assert [n for n, _ in outcomes] == [1, 1, 0, 0]
    assert outcomes[1][1] < 3.0 and outcomes[2][1] > 3.5  # the watcher's look, not the polls' 4 s; the rest slept on
    assert asked <= 1 + 2 + 2 + 4  # the first look, the two woken, and each poll's last look at its end


def test_a_lease_that_commits_after_its_long_poll_ended_is_released_not_held_against_anyone(
    db_url: str, tmp_path: Path
) -> None:
    """The node's call ends (it gave up waiting, its connection dropped) while its lease query is
    committing: nobody will run what was granted. The task is pending again at once, for the next
    node, and counts as neither the task's failure nor the node's (it would have expired a TTL
    later as both)."""
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=db_url))
    gone, other = Signer.generate(), Signer.generate()
    for i, n in enumerate((gone, other)):
        app.store.nodes.register_node(n.address, CPU, f"{i:064x}", app.runtime.now_ms(), 10**9, f"n{i}")
    raw = canonical_json(NoopSpec(tasks=1))
    job, tasks = app.intake.plan(raw, SUBMITTER, spec_hash(raw), job_id_for(SUBMITTER, spec_hash(raw)))
    app.store.jobs.create_job(job, tasks, app.runtime.now_ms())
    real = app.store.tasks.lease_many

    async def scenario() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        caller: asyncio.Task[Any] | None = None

        def call_ends_meanwhile(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            if caller is not None and not caller.done():
                if threading.get_ident() == loop_thread:  # SQLite: the transaction runs on the loop
                    caller.cancel()
                else:  # before the transaction's result reaches the loop
                    loop.call_soon_threadsafe(caller.cancel)
            return out

        app.store.tasks.lease_many = call_ends_meanwhile  # type: ignore[method-assign]
        caller = asyncio.create_task(app.scheduler.lease(gone.address, 1, 0))
        try:
            await caller
            raise AssertionError("the call was not cancelled")
        except asyncio.CancelledError:
            pass
        app.store.tasks.lease_many = real  # type: ignore[method-assign]
        deadline = time.monotonic() + 5.0
        while app.store.tasks.get_task(tasks[0].task_id).state != "pending" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        leases, _ = await app.scheduler.lease(other.address, 1, 0)
        await app.stop()
        return len(leases), leases[0].attempt if leases else 0

    granted, attempt = asyncio.run(scenario())
    assert granted == 1 and attempt == 2  # the released grant was attempt 1
    node = app.store.nodes.get_node(gone.address)
    assert node is not None and node.failures == 0 and node.backoff_until_ms == 0
    assert app.store.jobs.get_job(job.job_id).task_failures == 0
    kinds = [e.kind for e in app.store.jobs.events_after(job.job_id, 0)]
    assert "released" in kinds and "reissued" not in kinds, kinds


def test_heartbeats_are_written_off_the_event_loop(tmp_path: Path) -> None:
    # On SQLite, Runtime.db runs a transaction inline: a serving call on the loop would wait a
    # heartbeat's write out. Nobody waits on a heartbeat's answer by the millisecond.
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=f"sqlite:///{tmp_path / 'db'}"))
    assert app.runtime.inline_db
    node = Signer.generate()
    app.store.nodes.register_node(node.address, CPU, "0" * 64, app.runtime.now_ms(), 10**9, "n")
    real = app.store.tasks.heartbeat_many
    threads: list[int] = []

    def recorded(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    app.store.tasks.heartbeat_many = recorded  # type: ignore[method-assign]

    async def beat() -> int:
        assert await app.scheduler.heartbeat(node.address, [], False) == []
        return threading.get_ident()

    loop_thread = asyncio.run(beat())
    assert len(threads) == 1 and threads[0] != loop_thread
