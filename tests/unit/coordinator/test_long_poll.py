"""A long-polling LeaseTasks hears of work that appears while its first lease query runs (a
check opened by another node's result, a new job): it does not sleep out its whole wait,
during which a check assigned to it would expire and fall to the referee."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from coordinator.events import EventHub
from tensorgrid.crypto import Signer
from tensorgrid.spec import NoopSpec, canonical_json, job_id_for, spec_hash
from tests.unit.coordinator.test_storage import CPU

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
        await asyncio.sleep(0.05)  # the shared check runs
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
        await asyncio.sleep(0.05)  # the shared check runs: the queue is empty
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
