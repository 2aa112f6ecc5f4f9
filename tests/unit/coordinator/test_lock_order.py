"""Transactions that change several nodes' and jobs' rows take them in one order (nodes, then
jobs, each by key: coordinator.repositories.tasks.lock_in_order), the order a batch of results
takes them in. The reaper took them one expired lease at a time: node A, job X, then node B,
which a result batch held while it waited for job X: PostgreSQL ended one of them as a deadlock
(benchmarks.fleet at 5,000 nodes). PostgreSQL only: SQLite locks the whole database."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from sqlalchemy import select, update

from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from coordinator.db import schema as s
from coordinator.repositories.tasks import REAP_BATCH
from tensorgrid.crypto import Signer
from tensorgrid.spec import NoopSpec, canonical_json, job_id_for, spec_hash
from tests.unit.coordinator.test_storage import CPU

SUBMITTER = "0x" + "11" * 20


def test_the_reaper_and_a_result_batch_never_deadlock(migrated_pg_url: str, tmp_path: Path) -> None:
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=migrated_pg_url))
    store, timing = app.store, app.scheduler.timing
    a, b = sorted(Signer.generate().address for _ in range(2))
    jobs = []
    for i, node in enumerate((a, b)):  # job X leased to node A, job Y to node B
        store.nodes.register_node(node, CPU, f"{i:064x}", app.runtime.now_ms(), 10**9, f"n{i}")
        raw = canonical_json(NoopSpec(tasks=1))
        job, tasks = app.intake.plan(raw, SUBMITTER, spec_hash(raw), job_id_for(SUBMITTER, spec_hash(raw)))
        store.jobs.create_job(job, tasks, app.runtime.now_ms())
        leases, _ = store.tasks.lease_tasks(node, 1, app.runtime.now_ms(), timing)
        assert [x.job_id for x in leases] == [job.job_id]
        jobs.append(job.job_id)
    x = jobs[0]
    errors: list[BaseException] = []
    holding = threading.Event()

    def result_batch() -> None:
        """Node B's counters, then job X's progress: a result batch's order."""
        try:
            with store.engine.begin() as conn:
                conn.execute(select(s.nodes.c.address).where(s.nodes.c.address == b).with_for_update()).all()
                holding.set()
                time.sleep(0.5)  # the reaper is under way meanwhile
                conn.execute(select(s.jobs.c.job_id).where(s.jobs.c.job_id == x).with_for_update()).all()
        except BaseException as e:
            errors.append(e)

    def reaper() -> None:
        try:
            holding.wait(5)
            reaped.append(store.tasks.reap_expired(app.runtime.now_ms() + 10**9))
        except BaseException as e:
            errors.append(e)

    reaped: list[int] = []
    threads = [threading.Thread(target=result_batch), threading.Thread(target=reaper)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors  # before: psycopg's DeadlockDetected in one of them
    assert reaped == [2]
    assert {store.jobs.get_job(j).task_failures for j in jobs} == {1}


def test_a_heartbeat_batch_does_not_wait_on_a_node_row_another_transaction_holds(
    migrated_pg_url: str, tmp_path: Path
) -> None:
    """Beats that only say "alive" skip a node's row a result or the reaper holds; a beat that
    starts a drain still waits for it (it must be recorded). Before, the whole batch waited,
    holding the rows it had locked: convoys of seconds at 5,000 nodes."""
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=migrated_pg_url))
    store, timing = app.store, app.scheduler.timing
    busy, free = sorted(Signer.generate().address for _ in range(2))
    for i, node in enumerate((busy, free)):
        store.nodes.register_node(node, CPU, f"{i:064x}", 0, 10**9, f"n{i}")
    locked, release = threading.Event(), threading.Event()

    def holder() -> None:  # a result batch holding the busy node's row a while
        with store.engine.begin() as conn:
            conn.execute(select(s.nodes.c.address).where(s.nodes.c.address == busy).with_for_update()).all()
            locked.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        store.tasks.heartbeat_many([(busy, [], False, ""), (free, [], False, "")], 1_000, timing)
        assert time.monotonic() - started < 2.0  # it waited for nothing
        seen = {n.address: n.last_seen_ms for n in store.nodes.list_nodes()}
        assert seen[free] == 1_000 and seen[busy] == 0  # the busy node is seen at its next beat
        drained: list[bool] = []

        def drain() -> None:
            store.tasks.heartbeat_many([(busy, [], True, "")], 2_000, timing)
            drained.append(True)

        beat = threading.Thread(target=drain)
        beat.start()
        time.sleep(0.5)
        assert not drained  # a drain waits for the row
        release.set()
        beat.join(10)
        assert drained and store.nodes.get_node(busy).draining  # type: ignore[union-attr]
    finally:
        release.set()
        thread.join(10)
        asyncio.run(app.stop())


def test_the_reaper_reissues_every_expired_lease_in_short_transactions(db_url: str, tmp_path: Path) -> None:
    """A pass reissues all expired leases, at most REAP_BATCH per transaction (each holds its
    nodes' and jobs' rows until it commits: 500 at once held them for seconds at 5,000 nodes)."""
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=db_url))
    store = app.store
    node = Signer.generate().address
    store.nodes.register_node(node, CPU, "0" * 64, 0, 10**9, "n")
    raw = canonical_json(NoopSpec(tasks=REAP_BATCH * 2 + 5))
    job, tasks = app.intake.plan(raw, SUBMITTER, spec_hash(raw), job_id_for(SUBMITTER, spec_hash(raw)))
    store.jobs.create_job(job, tasks, app.runtime.now_ms())
    with store.engine.begin() as conn:  # every task leased to the node, its lease long expired
        conn.execute(update(s.tasks).values(state="leased", node=node, attempt=1, leased_ms=0, deadline_ms=1))
    batches: list[int] = []
    real = store.tasks.reap_expired

    def counted(now_ms: int) -> int:
        batches.append(real(now_ms))
        return batches[-1]

    store.tasks.reap_expired = counted  # type: ignore[method-assign]

    async def scenario() -> int:
        try:
            return await app.scheduler.reap_expired()
        finally:
            await app.stop()

    assert asyncio.run(scenario()) == REAP_BATCH * 2 + 5
    assert batches == [REAP_BATCH, REAP_BATCH, 5]
    assert store.tasks.count_pending(10**6) == REAP_BATCH * 2 + 5
