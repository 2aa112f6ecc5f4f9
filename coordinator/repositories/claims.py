"""Failure claims: a node saying a task's input is invalid or unsafe (a workload error).

Such a failure blames the workload, not the node, and spends one of the task's attempts, so
one node that lies about every task could fail every job. A claim therefore counts against
the task only once a second, distinct node makes one too:

- unconfirmed (no other node has claimed it): the task goes back to the pool for another node
  and spends no attempt; the claim counts against its reporter instead, once per task: a
  refusal (`nodes.rejections`) with a failure's backoff, and its verification streak reset
  (its results are checked as a newcomer's again). The same node claiming the same task again
  changes nothing.
- confirmed (a second node claims it): the claim spends an attempt, and so do the earlier
  unconfirmed claims it confirms; their reporters' refusals are taken back. From then on every
  claim on the task spends an attempt, as any failure does.

Two colluding nodes can still confirm each other's lie; what stops them is stake and the
verification of their other work, not this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, case, insert, select, update

from coordinator.db import schema as s
from coordinator.repositories.nodes import node_failed

claims = s.failure_claims


@dataclass(frozen=True)
class Claim:
    confirmed: bool  # another node made a claim on this task too
    spends: int  # attempts of the task it spends now


def claim(conn: Connection, task_id: str, node: str, kind: str, now_ms: int) -> Claim:
    """Record `node`'s workload-error claim on the task; say whether it counts, and how much."""
    rows = conn.execute(select(claims.c.node, claims.c.confirmed).where(claims.c.task_id == task_id)).all()
    mine = any(r.node == node for r in rows)
    others = [r for r in rows if r.node != node]
    if not mine:
        conn.execute(insert(claims).values(task_id=task_id, node=node, kind=kind, claimed_ms=now_ms, confirmed=False))
    if not others:
        if not mine:  # counted once per task, so a retry of an honest claim costs nothing more
            node_failed(conn, node, now_ms, rejection=True)
            conn.execute(update(s.reputation).where(s.reputation.c.address == node).values(consecutive_valid=0))
        return Claim(confirmed=False, spends=0)
    unconfirmed = sorted({r.node for r in others if not r.confirmed})
    if unconfirmed:
        conn.execute(update(claims).where(claims.c.task_id == task_id).values(confirmed=True))
        n = s.nodes.c
        conn.execute(
            update(s.nodes)
            .where(n.address.in_(unconfirmed))
            .values(rejections=case((n.rejections > 0, n.rejections - 1), else_=0))
        )
    elif not mine:
        conn.execute(update(claims).where(claims.c.task_id == task_id, claims.c.node == node).values(confirmed=True))
    return Claim(confirmed=True, spends=1 + len(unconfirmed))
