"""The generic part of accepting results: claim each task, record receipts, progress and events.

Under load, results from many nodes arrive together; recording them in one transaction
with multi-row inserts costs a fraction of one transaction each (the acceptance service
batches them). What accepting a result of a given kind does besides (credits, checks,
audits) is the kind's, composed by the service in the same transaction.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from coordinator.db import schema as s
from coordinator.db.rawsql import Raw, RawInsert
from coordinator.errors import Rejected
from coordinator.repositories.tasks import check_holder, check_matches, lost_lease
from tensorgrid.types import BlobRef, JobState, Receipt

_t = s.tasks
# Built once: a prebuilt statement keeps SQLAlchemy's cache key memoized (no per-call tree walk).
_ACCEPT_WHERE = (
    (_t.c.task_id == bindparam("b_task"))
    & (_t.c.node == bindparam("b_node"))
    & (_t.c.attempt == bindparam("b_attempt"))
    & (_t.c.state == "leased")
    & (_t.c.deadline_ms >= bindparam("b_now"))
    & (_t.c.job_id == bindparam("b_job"))
    & (_t.c.input_sha == bindparam("b_input"))
)
_ACCEPT_VALUES: dict[str, Any] = dict(
    state="done", output_sha=bindparam("b_out"), output_size=bindparam("b_size"), deadline_ms=None
)
_RETURNED = (_t.c.job_id, _t.c.idx, _t.c.undecided_ms)
_ACCEPT_ANY_ROWS = update(_t).where(_ACCEPT_WHERE).values(**_ACCEPT_VALUES).returning(*_RETURNED)
_ACCEPT_ROWS = (
    update(_t).where(_ACCEPT_WHERE & (_t.c.rows == bindparam("b_rows"))).values(**_ACCEPT_VALUES).returning(*_RETURNED)
)
_NODE_DONE = (
    update(s.nodes)
    .where(s.nodes.c.address == bindparam("b_node"))
    .values(
        completed=s.nodes.c.completed + bindparam("b_n"),
        consecutive_failures=0,
        backoff_until_ms=0,
        last_seen_ms=bindparam("b_now"),
    )
)
_JOB_DONE = (
    update(s.jobs)
    .where(s.jobs.c.job_id == bindparam("b_job"))
    .values(
        tasks_done=s.jobs.c.tasks_done + bindparam("b_n"),
        event_seq=s.jobs.c.event_seq + bindparam("b_n"),
        updated_ms=bindparam("b_now"),
    )
    .returning(s.jobs.c.event_seq, s.jobs.c.tasks_done, s.jobs.c.tasks_total, s.jobs.c.state)
)
# The accept path runs these per result: straight through the DB-API cursor (db/rawsql.py says why).
_ACCEPT_ANY_ROWS_RAW, _ACCEPT_ROWS_RAW = Raw(_ACCEPT_ANY_ROWS), Raw(_ACCEPT_ROWS)
_NODE_DONE_RAW, _JOB_DONE_RAW = Raw(_NODE_DONE), Raw(_JOB_DONE)
_RECEIPTS_RAW = RawInsert(s.receipts, [c.name for c in s.receipts.c])
_EVENTS_RAW = RawInsert(s.events, [c.name for c in s.events.c if c.name != "id"])


@dataclass(frozen=True)
class Claimed:
    """A result whose task was marked done in this transaction."""

    node: str
    receipt: Receipt
    output: BlobRef
    job_id: str
    index: int
    # the referee could not decide the claims on this task (tasks.undecided_ms): this result, from a
    # node that never claimed it, disproves them (claims.disproved)
    undecided: bool = False


def claim(conn: Connection, node: str, receipt: Receipt, output: BlobRef, rows: int | None, now_ms: int) -> Claimed:
    """Mark the task done if this is its lease holder's result for it; else raise Rejected saying why not."""
    r = receipt
    params = dict(
        b_task=r.task_id,
        b_node=node,
        b_attempt=r.attempt,
        b_now=now_ms,
        b_job=r.job_id,
        b_input=r.input_hash,
        b_out=output.sha256,
        b_size=output.size,
    )
    stmt = _ACCEPT_ANY_ROWS_RAW
    if rows is not None:
        stmt, params["b_rows"] = _ACCEPT_ROWS_RAW, rows
    row = stmt.first(conn, params)
    if row is None:
        current = conn.execute(select(_t).where(_t.c.task_id == r.task_id)).first()
        if current is not None and lost_lease(current, node, r.attempt):
            check_matches(current, r, rows)
            if late := _claim_lost_lease(conn, current, node, r, output, now_ms):
                return late
        check_holder(current, node, r.attempt, now_ms)
        check_matches(current, r, rows)
        raise Rejected("the result does not match its task")
    return Claimed(node, receipt, output, str(row.job_id), int(row.idx), row.undecided_ms is not None)


def _claim_lost_lease(
    conn: Connection, current: Any, node: str, r: Receipt, output: BlobRef, now_ms: int
) -> Claimed | None:
    """The result of a lease `node` lost before handing it in (tasks.lost_lease), accepted as that
    lease's: the task done at the receipt's attempt. A lease another node took since ends here
    (its heartbeat hears it revoked, its result is refused without counting against it:
    tasks.reject_task_result); its work is lost, as it would be to a quicker holder. Never an
    attempt whose result was accepted once (its receipt is on record: one caught and taken back),
    nor a task anyone's result is in for. None if the task moved on meanwhile."""
    if conn.execute(
        select(s.receipts.c.task_id).where(s.receipts.c.task_id == r.task_id, s.receipts.c.attempt == r.attempt)
    ).first():
        return None
    displaced = current.node if current.state == "leased" else None
    row = conn.execute(
        update(_t)
        .where(
            _t.c.task_id == r.task_id,
            _t.c.state == current.state,
            _t.c.attempt == current.attempt,
            _t.c.last_failed_node == node,
            _t.c.lost_attempt == r.attempt,
        )
        .values(
            **_ACCEPT_VALUES,
            node=node,
            attempt=r.attempt,
            last_failed_node=displaced if displaced else node,
            last_failed_ms=now_ms if displaced else current.last_failed_ms,
            lost_attempt=None,
        )
        .returning(*_RETURNED),
        dict(b_out=output.sha256, b_size=output.size),
    ).first()
    if row is None:
        return None
    return Claimed(node, r, output, str(row.job_id), int(row.idx), row.undecided_ms is not None)


def record_receipts(conn: Connection, accepted: list[Claimed], now_ms: int) -> None:
    """The signed receipts of the accepted results, and their nodes' counters."""
    _RECEIPTS_RAW.many(
        conn,
        [
            dict(
                task_id=c.receipt.task_id,
                attempt=c.receipt.attempt,
                node=c.node,
                input_hash=c.receipt.input_hash,
                output_hash=c.receipt.output_hash,
                commitment=c.receipt.commitment,
                signature=c.receipt.signature,
                received_ms=now_ms,
            )
            for c in accepted
        ],
    )
    per_node = Counter(c.node for c in accepted)
    _NODE_DONE_RAW.many(conn, [dict(b_node=node, b_n=n, b_now=now_ms) for node, n in sorted(per_node.items())])


def record_progress(conn: Connection, done: list[Claimed], now_ms: int) -> set[str]:
    """Job progress and one "completed" event per result that completes a task of its job.

    Returns the jobs that still have tasks left after this (no need to ask if they are complete)."""
    per_job: dict[str, list[Claimed]] = defaultdict(list)
    for c in done:
        per_job[c.job_id].append(c)
    events: list[dict[str, Any]] = []
    unfinished: set[str] = set()
    # Jobs' rows in job id order: two result batches touching the same two jobs in the orders their
    # results came in deadlocked (benchmarks.fleet at 5,000 nodes: a stall and INTERNAL errors).
    for job_id, claimed in sorted(per_job.items()):
        job = _JOB_DONE_RAW.first(conn, dict(b_job=job_id, b_n=len(claimed), b_now=now_ms))
        if job.tasks_done < job.tasks_total:
            unfinished.add(job_id)
        first_seq, first_done = job.event_seq - len(claimed), job.tasks_done - len(claimed)
        state = JobState(job.state).value
        for k, c in enumerate(claimed, start=1):
            events.append(
                dict(
                    job_id=job_id,
                    seq=first_seq + k,
                    kind="completed",
                    time_ms=now_ms,
                    task_index=c.index,
                    node=c.node,
                    message="",
                    tasks_done=first_done + k,
                    tasks_total=job.tasks_total,
                    state=state,
                )
            )
    if events:
        _EVENTS_RAW.many(conn, events)
    return unfinished


def subject_row(conn: Connection, task_id: str) -> Any:
    """The task row a result was accepted for (what a check of it copies)."""
    return conn.execute(select(_t).where(_t.c.task_id == task_id)).one()
