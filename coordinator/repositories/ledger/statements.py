"""Read-only statements for people: what one job's escrow holds, was charged and gave back, where
its chain writes stand, and what every node has earned. Nothing here writes.

Amounts are exact ints (Wei columns are text on SQLite, so they are added here, not in SQL).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from coordinator.db import schema as s
from coordinator.repositories.ledger.credits import RELEASE_ACTION
from coordinator.repositories.ledger.escrow import LOCK

# A job's own chain writes, in the order they happen: lock at the first lease, then one that
# closes the escrow (record_result for a result, release_job for a job that ended without one).
JOB_ACTIONS = (LOCK, "record_result", RELEASE_ACTION)


def job_settlement(conn: Connection, job_id: str) -> dict[str, Any]:
    """The job's escrow as the coordinator sees it: price, credits by stage, chain writes.

    credits: charged_wei (in an epoch whose root is confirmed on chain), posting_wei (in an epoch
    still on its way), pending_wei (not in an epoch yet), void_wei (never payable). refunded_wei
    is budget − charged once a closing write is confirmed (the contract refunds the rest), else None.
    """
    price = conn.execute(select(s.job_prices).where(s.job_prices.c.job_id == job_id)).first()
    chain = _job_chain_writes(conn, job_id)
    if price is None:
        return {"priced": False, "chain": chain}
    c, e = s.credits, s.epochs
    rows = conn.execute(
        select(c.c.amount_wei, c.c.void, e.c.state)
        .select_from(c.outerjoin(e, c.c.epoch == e.c.epoch))
        .where(c.c.job_id == job_id)
    ).all()
    stages = {"charged_wei": 0, "posting_wei": 0, "pending_wei": 0, "void_wei": 0}
    for amount, void, epoch_state in rows:
        stage = "void_wei" if void else "pending_wei" if epoch_state is None else "posting_wei"
        stage = "charged_wei" if epoch_state == "confirmed" and not void else stage
        stages[stage] += int(amount)
    budget = int(price.budget_wei)
    closed = any(w["action"] != LOCK and w["state"] == "confirmed" for w in chain)
    return {
        "priced": True,
        "reward_per_task_wei": int(price.reward_per_task_wei),
        "budget_wei": budget,
        "credited_wei": int(price.credited_wei),
        "void_reason": str(price.void_reason or ""),
        **stages,
        "refunded_wei": budget - stages["charged_wei"] if closed else None,
        "chain": chain,
    }


def _job_chain_writes(conn: Connection, job_id: str) -> list[dict[str, Any]]:
    o = s.outbox
    keys = [f"{action}:{job_id}" for action in JOB_ACTIONS]
    rows = conn.execute(
        select(o.c.action, o.c.state, o.c.tx_hash, o.c.attempts, o.c.last_error, o.c.updated_ms)
        .where(o.c.key.in_(keys))
        .order_by(o.c.id)
    ).all()
    return [
        {
            "action": r.action,
            "state": r.state,
            "tx_hash": r.tx_hash or "",
            "attempts": int(r.attempts or 0),
            "error": r.last_error or "",
            "updated_ms": int(r.updated_ms),
        }
        for r in rows
    ]


def node_earnings(conn: Connection) -> dict[str, tuple[int, int]]:
    """Every node's (earned, charged) wei: all its live credits, and what the newest epoch's tree holds."""
    rows = conn.execute(select(s.node_earnings.c.node, s.node_earnings.c.earned_wei, s.node_earnings.c.charged_wei))
    return {str(r.node): (int(r.earned_wei), int(r.charged_wei)) for r in rows}
