"""Checks no node runs, which the referee re-runs alone: an untrusted subject's spot-check
(CheckPlan.direct: a checker's agreement would need the referee's confirmation of the same rows
anyway) and a check no node could take; and what happens when the referee cannot run one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from coordinator.db import schema as s
from coordinator.repositories.verification import assign
from coordinator.repositories.verification.checks import (
    EventFn,
    chain_outputs,
    checks,
    referee_rulings,
    request_ruling,
    settle,
)


def hand_to_nodes(conn: Connection, chk: Any, now_ms: int) -> None:
    """A check the referee was to run alone but could not (a CUDA-only program on a CPU
    coordinator, its limits): a drawn node runs it, as every check did before, and its answer
    is settled as then (an agreement the referee cannot confirm passes unverified, a
    disagreement goes to a tiebreak)."""
    conn.execute(update(checks).where(checks.c.check_id == chk.check_id).values(state="open", created_ms=now_ms))
    conn.execute(update(s.tasks).where(s.tasks.c.task_id == chk.check_id).values(state="pending"))
    assign.assign_checker(conn, chk.check_id, now_ms)


def expire_unplaced(conn: Connection, now_ms: int, wait_ms: int, event: EventFn) -> set[str]:
    """Checks with no node to draw for wait_ms (a grid too small to check): the coordinator
    re-runs the rows itself. Only if it cannot (its ruling failed) does one pass unverified.

    A check whose assignee is merely slow is not expired: assign.reassign_stale draws again,
    and once it has barred every node that could take it, the check lands here too.
    """
    t, a = s.tasks, assign.check_assignments
    rows = conn.execute(
        select(checks)
        .join(t, t.c.task_id == checks.c.check_id)
        .outerjoin(a, a.c.task_id == checks.c.check_id)
        .where(
            checks.c.state == "open",
            checks.c.created_ms < now_ms - wait_ms,
            t.c.state == "pending",  # never leased, or leased and let lie by every node it could go to
            a.c.node.is_(None),
        )
        .limit(200)
    ).all()
    settled: set[str] = set()
    for chk in rows:
        if _has_ruling(conn, chk.root_id):  # the referee was asked already (done, failed or waiting)
            settle(conn, chk, "inconclusive" if chain_outputs(conn, chk.root_id) else "unverified", now_ms, event)
            settled.add(chk.job_id)
            continue
        conn.execute(update(checks).where(checks.c.check_id == chk.check_id).values(state="disputed"))
        conn.execute(
            update(t).where(t.c.task_id == chk.check_id).values(state="cancelled", node=None, deadline_ms=None)
        )
        request_ruling(conn, chk, now_ms, 0)
    return settled


def _has_ruling(conn: Connection, root_id: str) -> bool:
    return (
        conn.execute(select(referee_rulings.c.state).where(referee_rulings.c.check_id == root_id)).first() is not None
    )
