"""No free work: a job's escrow is locked on chain once its first task is leased, its result is
released only when the work is paid for, and a job that ends without a result gives back only
what its nodes did not earn.

  1. lock_job(…) in the transaction that leases a priced job's first task: queues `lock_job`.
     From its confirmation on, the submitter cannot cancel before the escrow's deadline, so
     every credit of the job can be charged (credits never exceed the budget).
  2. result_withheld(…): a priced job's result (its hash in reports, its blob) is held back
     until that lock is confirmed. If the lock fails (the submitter closed the escrow on chain
     first) the job ends, its uncharged credits are void, and its result is never released.
  3. release_ended_jobs(…) on the settlement timer: a locked job that ended without a result
     (cancelled through the coordinator, or failed) has its last credits charged in an epoch
     (first, its claimants' wins: ledger.claim_pay), then
     `release_job` closes its escrow and refunds the rest. Succeeded jobs go through
     ledger.job_finished (record_result) instead.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, select, update

from coordinator.db import schema as s
from coordinator.db.events import append_event
from coordinator.repositories.ledger import claim_pay, epochs
from coordinator.repositories.ledger import outbox as ob
from coordinator.repositories.ledger.credits import RELEASE_ACTION, void_job
from tensorgrid.chain.errors import ContractReverted
from tensorgrid.types import JobState

log = logging.getLogger("tensorgrid.coordinator.ledger")

LOCK = "lock_job"
RELEASE = RELEASE_ACTION
_UNSECURED = ("pending", "sent", "failed")  # a lock in these states does not (yet) cover the work


def lock_key(job_id: str) -> str:
    return f"{LOCK}:{job_id}"


def lock_job(conn: Connection, job_id: str, now_ms: int) -> bool:
    """Queue the on-chain lock of a priced job's escrow (idempotent); False for a free job."""
    if conn.execute(select(s.job_prices.c.job_id).where(s.job_prices.c.job_id == job_id)).first() is None:
        return False
    ob.enqueue(conn, lock_key(job_id), LOCK, {"job_id": job_id}, now_ms)
    return True


def result_withheld(conn: Connection, job_id: str) -> bool:
    """Whether a priced job's result must not be released yet: its escrow lock is not confirmed."""
    row = conn.execute(select(s.outbox.c.state).where(s.outbox.c.key == lock_key(job_id))).first()
    return row is not None and row.state in _UNSECURED


def withheld_blob(conn: Connection, sha256: str) -> str | None:
    """The job whose withheld result is blob `sha256`, if any (None: nothing holds it back)."""
    o, j = s.outbox, s.jobs
    unsecured = conn.execute(select(o.c.key).where((o.c.action == LOCK) & o.c.state.in_(_UNSECURED))).scalars().all()
    jobs = [k.split(":", 1)[1] for k in unsecured if ":" in k and "!" not in k]
    if not jobs:
        return None
    row = conn.execute(select(j.c.job_id).where(j.c.job_id.in_(jobs) & (j.c.result_sha == sha256)).limit(1)).first()
    return None if row is None else str(row.job_id)


def release_ended_jobs(conn: Connection, now_ms: int) -> int:
    """Queue `release_job` (after a post_root charging their last credits) for every locked job
    that ended without a result and is not released yet. Returns how many were queued."""
    j, o = s.jobs, s.outbox
    locked = select(o.c.key).where((o.c.key == LOCK + ":" + j.c.job_id) & (o.c.state != "failed")).exists()
    released = select(o.c.key).where(o.c.key == RELEASE + ":" + j.c.job_id).exists()
    ended = (JobState.CANCELLED.value, JobState.FAILED.value)
    rows = conn.execute(select(j.c.job_id).where(j.c.state.in_(ended), locked, ~released).order_by(j.c.job_id)).all()
    # Their price rows' locks (all first, in job order, as credits.credit_batches takes them)
    # order this with crediting served batches: a batch is either credited before, and charged
    # by the epoch below, or sees the queued release and is not credited at all.
    p = s.job_prices
    ids = [row.job_id for row in rows]
    conn.execute(select(p.c.job_id).where(p.c.job_id.in_(ids)).order_by(p.c.job_id).with_for_update()).all()
    for row in rows:
        claim_pay.pay(conn, row.job_id, now_ms, final=True)  # its claimants' wins (ledger.claim_pay)
        if epochs.has_uncharged(conn, row.job_id):
            epochs.post_epoch(conn, now_ms)
        ob.enqueue(conn, f"{RELEASE}:{row.job_id}", RELEASE, {"job_id": row.job_id}, now_ms)
        log.info("job %s ended without a result: its escrow is released after its last charge", row.job_id)
    return len(rows)


def on_lock_failed(conn: Connection, item: ob.OutboxItem, error: ContractReverted, now_ms: int) -> bool:
    """The escrow could not be locked (closed on chain first): the job ends, its credits are void."""
    job_id = str(item.payload["job_id"])
    reason = f"the escrow was closed on chain before the work could be secured ({error.error or error})"
    state = conn.execute(select(s.jobs.c.state).where(s.jobs.c.job_id == job_id)).scalar_one_or_none()
    if state is not None and not JobState(state).finished:
        _cancel_job(conn, job_id, reason, now_ms)
    void_job(conn, job_id, reason)
    log.error("job %s: lock failed (%s); its result is withheld for good", job_id, error)
    return True


def _cancel_job(conn: Connection, job_id: str, reason: str, now_ms: int) -> None:
    """repositories.jobs.end_job(CANCELLED), which the ledger cannot import (it sits below jobs)."""
    cancelled = JobState.CANCELLED.value
    conn.execute(
        update(s.jobs).where(s.jobs.c.job_id == job_id).values(state=cancelled, updated_ms=now_ms, error=reason)
    )
    conn.execute(
        update(s.tasks)
        .where((s.tasks.c.job_id == job_id) & s.tasks.c.state.in_(s.OPEN_TASK_STATES))
        .values(state="cancelled", node=None, deadline_ms=None)
    )
    append_event(conn, job_id, cancelled, now_ms, message=reason)
