"""Two coordinator replicas on one PostgreSQL database: what each may not do twice, or alone."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from coordinator.api.sessions import SessionCache, token_hash
from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig, LeaseTiming
from coordinator.db import schema as s
from coordinator.db.engine import make_engine
from coordinator.repositories.ledger import outbox
from tensorgrid.blobs import EMPTY_SHA256
from tensorgrid.crypto import Signer, write_key_file
from tensorgrid.errors import TensorGridError
from tensorgrid.spec import NoopSpec, canonical_json, job_id_for, spec_hash
from tensorgrid.types import JobState
from tests.unit.coordinator.test_storage import CPU

pytestmark = pytest.mark.postgres


def _close(app: Coordinator) -> None:
    app.runtime.shutdown()
    app.store.close()


def test_a_replica_with_another_key_is_refused(tmp_path: Path, pg_url: str) -> None:
    first = Coordinator(CoordinatorConfig(data_dir=tmp_path / "a", database_url=pg_url))
    _close(first)
    same = tmp_path / "b"
    write_key_file(same / "coordinator.key", first.identity)  # the same key, another data dir: fine
    _close(Coordinator(CoordinatorConfig(data_dir=same, database_url=pg_url)))
    write_key_file(tmp_path / "c" / "coordinator.key", Signer.generate())
    with pytest.raises(TensorGridError, match="must share coordinator.key"):
        Coordinator(CoordinatorConfig(data_dir=tmp_path / "c", database_url=pg_url))


def test_two_replicas_queueing_one_chain_write_at_once_queue_it_once(tmp_path: Path, pg_url: str) -> None:
    _close(Coordinator(CoordinatorConfig(data_dir=tmp_path / "a", database_url=pg_url)))  # the schema
    engine = make_engine(pg_url)
    payload = {"job_id": "0x" + "ab" * 32, "result_hash": "cd" * 32}
    answers: list[bool] = []
    try:
        with engine.begin() as first:  # both saw the key missing; the first has not committed yet
            assert outbox.enqueue(first, "record_result:x", "record_result", payload, 1)

            def second() -> None:
                with engine.begin() as conn:
                    answers.append(outbox.enqueue(conn, "record_result:x", "record_result", payload, 2))

            racing = threading.Thread(target=second)
            racing.start()
            racing.join(0.5)
            assert racing.is_alive()  # waiting for the first transaction, not failing
        racing.join(10)
        assert answers == [False]
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(s.outbox)).scalar_one() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["submitter", "dashboard"])
def test_a_session_another_replica_pushed_out_leaves_this_ones_cache(tmp_path: Path, pg_url: str, kind: str) -> None:
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "a", database_url=pg_url))
    try:
        address, now = Signer.generate().address, app.runtime.now_ms()
        old, new = "old-token", "new-token"
        read = app.store.sessions.submitter if kind == "submitter" else app.store.sessions.dashboard
        cache = SessionCache(lambda h: asyncio.sleep(0, read(h)))
        app.store.sessions.open_session(address, token_hash(old), "n1", now, 60_000, 1, kind)
        cache.add(old, address, now + 60_000)  # this replica opened it and caches it
        assert app.store.sessions.open_session(address, token_hash(new), "n2", now, 60_000, 1, kind) == [
            token_hash(old)
        ]
        asked = cache.cached()  # the other replica's session pushed it out of the database
        assert cache.keep_held(asked, app.store.sessions.held(kind, asked)) == 1
        assert asyncio.run(cache.resolve(old)) is None
        assert asyncio.run(cache.resolve(new)) == address
    finally:
        _close(app)


def test_a_job_a_dead_replica_left_unassembled_is_assembled_by_another(tmp_path: Path, pg_url: str) -> None:
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "a", database_url=pg_url))
    try:
        submitter = Signer.generate().address
        raw = canonical_json(NoopSpec(tasks=2))
        job, tasks = app.intake.plan(raw, submitter, spec_hash(raw), job_id_for(submitter, spec_hash(raw)))
        app.store.jobs.create_job(job, tasks, app.runtime.now_ms())
        with app.store.engine.begin() as conn:  # every result accepted, then the replica died
            conn.execute(
                update(s.tasks)
                .where(s.tasks.c.job_id == job.job_id)
                .values(state="done", output_sha=EMPTY_SHA256, output_size=0)
            )
            conn.execute(update(s.jobs).where(s.jobs.c.job_id == job.job_id).values(tasks_done=2, state="running"))

        async def sweep() -> JobState:
            looking = asyncio.ensure_future(app.aggregation.sweep_loop(0.2))
            try:
                for _ in range(50):
                    await asyncio.sleep(0.1)
                    if (state := (await app.runtime.db(app.store.jobs.get_job, job.job_id)).state).finished:
                        return state
                return state
            finally:
                looking.cancel()

        assert asyncio.run(sweep()) == JobState.SUCCEEDED
    finally:
        _close(app)


def test_a_node_handing_in_its_own_accepted_result_again_is_not_held_against(tmp_path: Path, pg_url: str) -> None:
    """The replica that accepted the result died before answering; the node hands its kept copy
    to the other replica, which refuses it (the task is done) without counting it against the node."""
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "a", database_url=pg_url))
    try:
        node, submitter, now = Signer.generate().address, Signer.generate().address, app.runtime.now_ms()
        app.store.nodes.register_node(node, CPU, "0" * 64, now, 10**9, "n")
        raw = canonical_json(NoopSpec(tasks=1))
        job, tasks = app.intake.plan(raw, submitter, spec_hash(raw), job_id_for(submitter, spec_hash(raw)))
        app.store.jobs.create_job(job, tasks, now)
        (lease,), _ = app.store.tasks.lease_tasks(node, 1, now, LeaseTiming())
        with app.store.engine.begin() as conn:  # accepted and committed by the replica that died
            conn.execute(update(s.tasks).where(s.tasks.c.task_id == lease.task_id).values(state="done"))
        app.store.tasks.reject_task_result(node, lease.task_id, lease.attempt, "the lease is over", now, forged=True)
        with app.store.engine.connect() as conn:
            row = conn.execute(select(s.nodes).where(s.nodes.c.address == node)).one()
        assert (row.rejections, row.consecutive_failures, row.backoff_until_ms) == (0, 0, 0)
    finally:
        _close(app)
