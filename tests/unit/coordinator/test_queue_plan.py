"""A lease walks the queue in its index's order and stops at the first tasks its node may take,
whatever PostgreSQL's statistics say. On a tasks table autovacuum had not analysed yet (a new
database, for its first minute or more; every benchmarks.fleet size), the planner guessed
pending tasks rare, fetched every one and sorted them for each lease: a single lease with 3,000
tasks queued took 17 ms at the median instead of 4. PostgreSQL only: SQLite walks the index by
itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import Connection, text

from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from coordinator.repositories import leasing
from tensorgrid.crypto import Signer
from tensorgrid.spec import NoopSpec, canonical_json, job_id_for, spec_hash
from tests.unit.coordinator.test_storage import CPU

SUBMITTER = "0x" + "11" * 20


def _queue_plan(conn: Connection, node: str) -> str:
    params = {
        "b_not_device": "cuda",
        "b_memory": CPU.memory_bytes,
        "b_node": node,
        "b_avoid_before": 0,
        "b_limit": 1,
    }
    compiled = leasing._PENDING.compile(dialect=conn.dialect)
    rows = conn.exec_driver_sql(f"EXPLAIN {compiled}", compiled.construct_params(params))
    return "\n".join(row[0] for row in rows)


def test_leasing_walks_the_queue_in_order_before_the_table_has_statistics(migrated_pg_url: str, tmp_path: Path) -> None:
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=migrated_pg_url))
    store, engine = app.store, app.store.engine
    node = Signer.generate().address
    store.nodes.register_node(node, CPU, "0" * 64, app.runtime.now_ms(), 10**9, "n")
    with engine.begin() as conn:  # no statistics yet, and none for the whole test
        conn.execute(text("ALTER TABLE tasks SET (autovacuum_enabled = false)"))
    raw = canonical_json(NoopSpec(tasks=3000))
    job, tasks = app.intake.plan(raw, SUBMITTER, spec_hash(raw), job_id_for(SUBMITTER, spec_hash(raw)))
    store.jobs.create_job(job, tasks, app.runtime.now_ms())
    try:
        with engine.begin() as conn:
            assert "Sort" in _queue_plan(conn, node)  # what the statistics alone lead to
        with engine.begin() as conn:
            leasing._lock_leasing(conn, [node])
            plan = _queue_plan(conn, node)
            assert "Sort" not in plan and "ix_tasks_pending" in plan, plan
        leases, _ = store.tasks.lease_tasks(node, 2, app.runtime.now_ms(), app.scheduler.timing)
        assert [(x.job_id, x.index) for x in leases] == [(job.job_id, 0), (job.job_id, 1)]  # the queue's head
    finally:
        asyncio.run(app.stop())
