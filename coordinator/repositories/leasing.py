"""Leasing: which pending tasks a node may take and how many it may hold, granted with deadlines
in the caller's transaction (a LeaseTasks batch, or the batch accepting results that ask for
their nodes' next tasks).

A node holds at most LeaseTiming.per_node leases (--max-node-leases) at once, however it asks:
a node hoarding leases would keep a job's tasks from other nodes and stall the job until each
lease expires. Its leases are counted in the transaction that grants more, and one node's
leasing transactions take turns (a PostgreSQL advisory lock per node; SQLite has one writer),
so calls racing each other, to one replica or to several, cannot each grant the room they saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, func, or_, select, text, update

from coordinator.config import LeaseTiming
from coordinator.db import schema as s
from coordinator.db.events import append_event
from coordinator.db.rawsql import Raw
from coordinator.errors import Rejected
from coordinator.repositories.ledger.escrow import lock_job
from tensorgrid.types import BlobRef, JobState, Lease

# After a node fails a task, other nodes get the first chance at it for this long (the default
# of LeaseTiming.avoid_failed_ms, --avoid-failed-node-ms).
AVOID_FAILED_NODE_MS = LeaseTiming.avoid_failed_ms
MAX_PER_CALL = 256  # leases one LeaseTasks call (or one result's next leases) may grant
# What a node holding LeaseTiming.per_node leases is told: ask again after this long (it holds
# that many tasks to work on meanwhile).
HOLDING_RETRY_MS = 1_000


def leasable_by_node() -> Any:
    """SQL condition on s.tasks for the leasing node (bind b_node): any task but a check not assigned to it."""
    t, a = s.tasks, s.check_assignments
    mine = exists(select(a.c.task_id).where(and_(a.c.task_id == t.c.task_id, a.c.node == bindparam("b_node"))))
    return or_(t.c.kind != s.CHECK_KIND, mine)


_t = s.tasks
# Statements of the leasing hot path, built once (see results.py for why).
# The leasing node, and the leases it holds now (from the index ix_tasks_node_state).
_HELD = select(func.count()).select_from(_t).where(_t.c.node == s.nodes.c.address, _t.c.state == "leased")
_NODE = select(s.nodes, _HELD.label("held")).where(s.nodes.c.address == bindparam("b_node"))
_PENDING_WHERE = (
    _t.c.state == "pending",
    _t.c.device != bindparam("b_not_device"),
    _t.c.min_memory_bytes <= bindparam("b_memory"),
    or_(
        _t.c.last_failed_node.is_(None),
        _t.c.last_failed_node != bindparam("b_node"),
        _t.c.last_failed_ms < bindparam("b_avoid_before"),
    ),
    leasable_by_node(),  # a check goes only to the checker the coordinator drew
    # a task whose review the referee could not decide never goes back to a node that claimed it
    # (repositories.claims); the probe runs only for such tasks
    or_(
        _t.c.undecided_ms.is_(None),
        ~exists(
            select(s.failure_claims.c.task_id).where(
                s.failure_claims.c.task_id == _t.c.task_id, s.failure_claims.c.node == bindparam("b_node")
            )
        ),
    ),
)


def _pending(*extra: Any) -> Any:
    return (
        select(_t)
        .where(*_PENDING_WHERE, *extra)
        .order_by(_t.c.job_created_ms, _t.c.idx)
        .limit(bindparam("b_limit"))
        .with_for_update(skip_locked=True)
    )


_PENDING = _pending()
_PENDING_RAW = Raw(_PENDING)
# For a node barred from some jobs (too little stake): skipped in SQL, so it is never starved
# behind a queue head it may not take.
_PENDING_NOT_BARRED = _pending(_t.c.job_id.not_in(bindparam("b_barred", expanding=True)))
Barred = Callable[[Connection, str], set[str]]
_GRANT = (
    update(_t)
    .where(_t.c.task_id == bindparam("b_task"))
    .values(
        state="leased",
        attempt=_t.c.attempt + 1,
        node=bindparam("b_node"),
        leased_ms=bindparam("b_now"),
        deadline_ms=bindparam("b_deadline"),
    )
)
_NODE_RAW, _GRANT_RAW = Raw(_NODE), Raw(_GRANT)
# PostgreSQL advisory locks of the two-key form (a key space apart from the one-key locks of the
# outbox and migrations): (this class, a node's key) serialises that node's leasing.
# The same statement turns sorting off for the rest of the transaction (set_config(..., true) is
# SET LOCAL): the queue (_PENDING) is then always walked in ix_tasks_pending's order, stopping at
# the first tasks the node may take. Before autovacuum first analysed the tasks table (a new
# database's first minute or more: every size of benchmarks.fleet) the planner guessed pending
# tasks rare, fetched every one and sorted them for each lease: at 3,000 queued, 3.5 ms of the
# database's CPU per lease instead of 0.3 (a lease's median 17 ms instead of 4 at load 5).
_LEASING_LOCK = 0x6C656173  # "leas"
_LOCK_NODES = Raw(
    text(
        "SELECT pg_advisory_xact_lock(:b_lock, k), set_config('enable_sort', 'off', true)"
        " FROM unnest(CAST(:b_keys AS integer[])) WITH ORDINALITY AS u(k, n) ORDER BY n"
    )
)


def _lock_leasing(conn: Connection, addresses: list[str]) -> None:
    """Until this transaction ends, no other (in this process or another replica) leases to these
    nodes: each counts a node's leases and then grants up to its cap, so two at once would each
    grant the room they saw. In key order, so two transactions never wait for each other in a
    cycle. SQLite needs none: its transactions take the write lock first (BEGIN IMMEDIATE), and
    it walks the queue in the index's order by itself. (Also turns PostgreSQL's sorts off for
    the transaction: see _LOCK_NODES.)"""
    if conn.dialect.name != "postgresql" or not addresses:
        return
    keys = sorted({int(a.removeprefix("0x")[:8], 16) - (1 << 31) for a in addresses})  # an int4 each
    _LOCK_NODES.run(conn, {"b_lock": _LEASING_LOCK, "b_keys": keys})


def lease_in(
    conn: Connection,
    requests: list[tuple[str, int]],
    now_ms: int,
    timing: LeaseTiming,
    barred: Barred | None,
    started_jobs: set[str],
) -> list[tuple[list[Lease], int] | Rejected]:
    """lease() for each (node, max_tasks), in the caller's transaction: its leases, or why it may not lease."""
    out: list[tuple[list[Lease], int] | Rejected] = []
    _lock_leasing(conn, [address for address, _ in requests])
    for address, max_tasks in requests:
        try:
            out.append(lease(conn, address, max_tasks, now_ms, timing, barred, started_jobs))
        except Rejected as e:
            out.append(e)
    return out


STARTED_CACHE = 4096  # job ids kept per process; past it the cache starts over


def _remember(started_jobs: set[str], job_id: str) -> None:
    if len(started_jobs) >= STARTED_CACHE:
        started_jobs.clear()  # a long-lived coordinator sees jobs without end: one no-op UPDATE each again
    started_jobs.add(job_id)


def lease(
    conn: Connection,
    address: str,
    max_tasks: int,
    now_ms: int,
    timing: LeaseTiming,
    barred: Barred | None,
    started_jobs: set[str],
) -> tuple[list[Lease], int]:
    """Up to max_tasks pending tasks the node can run, within its room under timing.per_node,
    granted in the caller's transaction; (leases, retry_after_ms). started_jobs: jobs this
    process has seen started (their queued → running update is skipped), updated here."""
    node = _NODE_RAW.first(conn, {"b_node": address})
    if node is None:
        raise Rejected("unknown node: register first")
    if node.draining:
        return [], 1000
    if node.backoff_until_ms > now_ms:
        return [], int(node.backoff_until_ms - now_ms)
    # No node holds more than per_node at once: leasing and never handing in cannot starve
    # other nodes of a job's tasks, however often it asks (the node agent holds two per slot).
    room = timing.per_node - node.held
    if room <= 0:
        return [], HOLDING_RETRY_MS
    skip = barred(conn, address) if barred is not None else set()
    params = {
        # A CUDA node can run any task; a CPU node anything but CUDA-only tasks.
        "b_not_device": "" if node.device_kind == "cuda" else "cuda",
        "b_memory": node.memory_bytes,
        "b_node": address,
        "b_avoid_before": now_ms - timing.avoid_failed_ms,
        "b_limit": max(1, min(max_tasks, MAX_PER_CALL, room)),
    }
    if skip:  # an expanding IN list: not on the raw path
        rows = conn.execute(_PENDING_NOT_BARRED, {**params, "b_barred": sorted(skip)}).all()
    else:
        rows = _PENDING_RAW.all(conn, params)
    if not rows:
        return [], 500
    deadline = now_ms + timing.ttl_ms
    _GRANT_RAW.many(
        conn, [{"b_task": r.task_id, "b_node": address, "b_now": now_ms, "b_deadline": deadline} for r in rows]
    )
    for job_id in sorted({r.job_id for r in rows} - started_jobs):
        started = conn.execute(
            update(s.jobs)
            .where(s.jobs.c.job_id == job_id, s.jobs.c.state == JobState.QUEUED.value)
            .values(state=JobState.RUNNING.value)
        )
        if started.rowcount:
            append_event(conn, job_id, "running", now_ms, node=address)
            lock_job(conn, job_id, now_ms)  # no free work: the escrow is locked from the first lease
        else:
            # Cached only once seen started by a committed transaction (no job goes back to
            # queued): this transaction may still roll back, and its start with it.
            _remember(started_jobs, job_id)
    return [_to_lease(r, address, deadline) for r in rows], 0


def _to_lease(r: Any, address: str, deadline: int) -> Lease:
    settings = {} if r.settings == "{}" else json.loads(r.settings)  # most tasks have none
    kind = r.kind
    if kind == s.CHECK_KIND:  # a check looks like any task of its job (settings may name its task kind)
        kind = str(settings.get("task_kind", s.CHECK_LEASED_AS))
    return Lease(
        job_id=r.job_id,
        task_id=r.task_id,
        attempt=r.attempt + 1,
        deadline_ms=deadline,
        kind=kind,
        model=BlobRef(r.model_sha, r.model_size) if r.model_sha else None,
        input=BlobRef(r.input_sha, r.input_size),
        settings=settings,
        memory_limit_bytes=r.memory_limit_bytes,
        time_limit_ms=r.time_limit_ms,
        index=r.idx,
        rows=r.rows,
    )
