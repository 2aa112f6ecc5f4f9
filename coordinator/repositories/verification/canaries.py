"""Canaries: a verified shard re-leased whole to another node, a task with a known answer.

Indistinguishable from an ordinary task: a fresh id, the full shard's size, queued in its
job's turn, and an input no node has seen: the shard's rows shuffled (the canary's `rows`
say where each came from), so its hash is not the original shard's. The shuffled input is
written when the result's spot-check is opened (blob work stays off the accept
transaction); the canary opens only if that check verifies the result.

Leased early (issue 12): when the result's check is certain (an untrusted node's, checked at
rate 1) the same canary (the same draw from the coordinator's secret, id, input and rows) is
decided when the shard is leased, and its task is leased to another node while the job still
has work (services/verification/canaries.py): its check row waits in state AHEAD, with no
subject output, and is neither counted open (the job does not wait for it) nor reported. When
the result's check verifies, the canary is armed: it opens as a canary opened then would, and an
output its checker sent meanwhile is compared then (a parked output: Verdict.parked). A check
that does not verify, or a lease that ended without a result (its task leased again), voids it.
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, delete, insert, select, update

from coordinator.db import schema as s

AHEAD = "ahead"  # the state of a canary's check row leased before its subject's result is verified
canary_plans, checks = s.canary_plans, s.checks


def save(conn: Connection, check_id: str, canary_id: str, input_sha: str, input_size: int, rows: list[int]) -> None:
    conn.execute(
        insert(canary_plans).values(
            check_id=check_id, canary_id=canary_id, input_sha=input_sha, input_size=input_size, rows=json.dumps(rows)
        )
    )


def take(conn: Connection, check_id: str) -> tuple[str, str, int, tuple[int, ...]] | None:
    """(canary id, input sha, input size, rows) prepared for this check, removed; None if none."""
    row = conn.execute(select(canary_plans).where(canary_plans.c.check_id == check_id)).first()
    if row is None:
        return None
    conn.execute(delete(canary_plans).where(canary_plans.c.check_id == check_id))
    return str(row.canary_id), str(row.input_sha), int(row.input_size), tuple(json.loads(row.rows))


def drop(conn: Connection, check_id: str) -> None:
    """The check did not verify its result: no canary follows it, and one leased early is void."""
    canary_id = conn.execute(select(canary_plans.c.canary_id).where(canary_plans.c.check_id == check_id)).scalar()
    conn.execute(delete(canary_plans).where(canary_plans.c.check_id == check_id))
    if canary_id is not None:
        void(conn, [str(canary_id)])


def arm(conn: Connection, canary_id: str, subject_output: str, now_ms: int) -> bool:
    """Open the canary leased early under this id against the verified subject output; False if none was."""
    res = conn.execute(
        update(checks)
        .where(checks.c.check_id == canary_id, checks.c.state == AHEAD)
        .values(state="open", subject_output=subject_output, created_ms=now_ms)
    )
    return bool(res.rowcount)


def void(conn: Connection, canary_ids: list[str]) -> None:
    """Canaries leased early whose subject result will not be verified: their check rows go
    (never reported) and their tasks are cancelled: an output sent later is refused, and not held
    against its node (the task keeps its node, as a cancelled job's late results are)."""
    ids = [row.check_id for row in conn.execute(
        select(checks.c.check_id).where(checks.c.check_id.in_(canary_ids), checks.c.state == AHEAD)
    )]  # fmt: skip
    if not ids:
        return
    conn.execute(delete(checks).where(checks.c.check_id.in_(ids)))
    t = s.tasks
    conn.execute(
        update(t)
        .where(t.c.task_id.in_(ids), t.c.state.in_(s.OPEN_TASK_STATES))
        .values(state="cancelled", deadline_ms=None)
    )


def void_earlier(conn: Connection, job_id: str, task_id: str, attempt: int) -> None:
    """A shard leased again (attempt): canaries leased early for its earlier leases are void."""
    c = checks.c
    ids = conn.execute(
        select(c.check_id).where(
            c.job_id == job_id, c.state == AHEAD, c.subject_task == task_id, c.subject_attempt < attempt
        )
    ).all()
    void(conn, [str(r.check_id) for r in ids])
