"""Who checks whom: the coordinator picks each check's checker; nodes never pick themselves.

A check task can be leased only by the node it is assigned to. If checks went to whichever
node asked first, a few eager cheaters would end up checking each other (and could agree
on a wrong answer against an honest node). The checker is drawn at random among nodes seen
recently that can run the task and are not barred from it (the subject, anyone already in
its chain, an assignee that let it lie), weighted by reputation: nodes with a streak of
verified work check more often, caught nodes rarely. An assignee that does not take its
check within ASSIGN_MS is barred from it and another is drawn; with no candidate left the
check waits, and passes as unverified after the coordinator's check_wait_ms. An assignee
busy with a live lease is not letting it lie (a one-slot node computing a shard cannot take
anything until it is done): it keeps the check, for as long as the check is younger than
check_wait_ms. Before, on a 2-node grid, the check of one node's last shard went to the other
while it computed its own, was taken from it 5 s later, and waited 30 s for the referee.
"""

from __future__ import annotations

import random
import secrets

from sqlalchemy import Connection, delete, insert, or_, select, update

from coordinator.db import schema as s
from coordinator.db.sql import insert_ignore
from coordinator.repositories.verification.canaries import AHEAD

ACTIVE_MS = 60_000  # a node seen within this long is a candidate checker
ASSIGN_MS = 5_000  # an assignee has this long to lease its check (a dead one costs this much)
MAX_STREAK_WEIGHT = 20
CHECK_KIND = s.CHECK_KIND
check_assignments, check_exclusions, reputation = s.check_assignments, s.check_exclusions, s.reputation
_rng = secrets.SystemRandom()


def weight(consecutive_valid: int, caught: int) -> float:
    """A candidate's chance to be drawn, relative to others: earned by verified work, lost by being caught."""
    return (1 + min(max(consecutive_valid, 0), MAX_STREAK_WEIGHT)) / (1 + 4 * max(caught, 0))


def assign_checker(conn: Connection, task_id: str, now_ms: int, rng: random.Random | None = None) -> str | None:
    """Draw the checker of check task `task_id` and record it; None when no node may take it."""
    t, n, r = s.tasks, s.nodes, reputation
    task = conn.execute(select(t.c.device, t.c.min_memory_bytes).where(t.c.task_id == task_id)).one()
    barred = select(check_exclusions.c.node).where(check_exclusions.c.task_id == task_id)
    query = (
        select(n.c.address, r.c.consecutive_valid, r.c.caught)
        .outerjoin(r, r.c.address == n.c.address)
        .where(
            n.c.last_seen_ms >= now_ms - ACTIVE_MS,
            n.c.draining.is_(False),
            n.c.backoff_until_ms <= now_ms,
            n.c.memory_bytes >= task.min_memory_bytes,
            n.c.address.not_in(barred),
        )
        .order_by(n.c.address)  # a stable order, so a seeded rng draws reproducibly
    )
    if task.device == "cuda":
        query = query.where(n.c.device_kind == "cuda")
    candidates = conn.execute(query).all()
    conn.execute(delete(check_assignments).where(check_assignments.c.task_id == task_id))
    if not candidates:
        return None
    weights = [weight(c.consecutive_valid or 0, c.caught or 0) for c in candidates]
    chosen = str((rng or _rng).choices([c.address for c in candidates], weights)[0])
    conn.execute(insert(check_assignments).values(task_id=task_id, node=chosen, until_ms=now_ms + ASSIGN_MS))
    return chosen


def reassign_stale(conn: Connection, now_ms: int, limit: int = 200, patience_ms: int = 0) -> int:
    """Pending checks whose assignee let them lie (or that had nobody): bar it, draw again. An
    assignee holding a live lease keeps its check for ASSIGN_MS more while the check is younger
    than patience_ms (the coordinator's check_wait_ms).

    Returns how many checks got a new checker (worth waking long-polling nodes for).
    """
    t, a = s.tasks, check_assignments
    rows = conn.execute(
        select(t.c.task_id, a.c.node, s.checks.c.created_ms, s.checks.c.state)
        .outerjoin(a, a.c.task_id == t.c.task_id)
        .join(s.checks, s.checks.c.check_id == t.c.task_id)
        .where(t.c.kind == CHECK_KIND, t.c.state == "pending", or_(a.c.node.is_(None), a.c.until_ms < now_ms))
        .limit(limit)
    ).all()
    assigned = 0
    for row in rows:
        if row.node is not None:
            # a canary leased early waits for a busy assignee however long its own shard takes:
            # it is no check of a result yet, and nothing waits for it (canaries.py)
            young = row.state == AHEAD or now_ms < row.created_ms + patience_ms
            if young and _busy(conn, row.node, now_ms):
                conn.execute(update(a).where(a.c.task_id == row.task_id).values(until_ms=now_ms + ASSIGN_MS))
                continue
            bar(conn, row.task_id, [row.node])
        assigned += assign_checker(conn, row.task_id, now_ms) is not None
    return assigned


def _busy(conn: Connection, node: str, now_ms: int) -> bool:
    """The node holds a live lease: it is working, not ignoring its check."""
    t = s.tasks
    live = select(t.c.task_id).where(t.c.state == "leased", t.c.node == node, t.c.deadline_ms >= now_ms).limit(1)
    return conn.execute(live).first() is not None


def bar(conn: Connection, task_id: str, nodes: list[str]) -> None:
    """Nodes that may never take this check task. Another replica may bar the same node at the
    same moment (both reaping one expired check): a row already there is left as it is."""
    have = {x.node for x in conn.execute(select(check_exclusions.c.node).where(check_exclusions.c.task_id == task_id))}
    new = sorted({node for node in nodes if node} - have)
    if new:
        insert_ignore(conn, check_exclusions, [dict(task_id=task_id, node=node) for node in new])
