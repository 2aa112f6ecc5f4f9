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
