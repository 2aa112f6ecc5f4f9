"""Reputation, and trust that cannot be farmed.

Every node starts untrusted: each of its results is checked, and its agreement with another
node is confirmed by the referee. Trust (being checked at 1/streak, never below the floor)
is earned only by verified results on jobs that paid for them (reward > 0), and is judged
per job: a node is trusted for a job when its streak of verified paid results has reached
`trust_after`, those results came from at least MIN_SUBMITTERS submitters other than this
job's, and their reward adds up to `trust_after` times this job's reward per task (each
submitter counting for at most its share of that). So a Sybil that farms results on its
own unpaid jobs earns nothing; one that pays itself needs several submitter keys and as much
reward locked in escrow as the job it means to cheat on is worth; and trust earned on small
jobs does not carry to a big one. Being caught (or a dispute that proves nothing) resets it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, delete, select, update

from coordinator.db import schema as s
from coordinator.db.sql import insert_ignore

MIN_SUBMITTERS = 3
reputation, trust_earnings = s.reputation, s.trust_earnings


def bump(conn: Connection, nodes: Iterable[str], *, valid: bool, job_id: str = "") -> None:
    """A node's verified result (on `job_id`) extends its streak if the job pays; a caught one resets it."""
    nodes = sorted(set(nodes))
    if not nodes:
        return
    insert_ignore(conn, reputation, [dict(address=n, consecutive_valid=0, verified=0, caught=0) for n in nodes])
    r = reputation.c
    if not valid:
        conn.execute(update(reputation).where(r.address.in_(nodes)).values(consecutive_valid=0, caught=r.caught + 1))
        conn.execute(delete(trust_earnings).where(trust_earnings.c.address.in_(nodes)))
        conn.execute(update(s.nodes).where(s.nodes.c.address.in_(nodes)).values(rejections=s.nodes.c.rejections + 1))
        return
    reward, submitter = _job_terms(conn, job_id)
    values: dict[str, Any] = dict(verified=r.verified + 1)
    if reward > 0:
        values["consecutive_valid"] = r.consecutive_valid + 1
        for node in nodes:
            _earn(conn, node, submitter, reward)
    conn.execute(update(reputation).where(r.address.in_(nodes)).values(**values))


def reset_streak(conn: Connection, nodes: Iterable[str]) -> None:
    """The node's results get checked as a newcomer's again, without counting it as caught."""
    nodes = sorted(set(nodes))
    conn.execute(update(reputation).where(reputation.c.address.in_(nodes)).values(consecutive_valid=0))
    conn.execute(delete(trust_earnings).where(trust_earnings.c.address.in_(nodes)))


def consecutive_valid(conn: Connection, node: str) -> int:
    v = conn.execute(select(reputation.c.consecutive_valid).where(reputation.c.address == node)).scalar()
    return int(v or 0)


def streak_for_job(conn: Connection, node: str, job_id: str, trust_after: int) -> int:
    """The streak the job's policy should see: the node's own if it is trusted for this job, else 0."""
    streak = consecutive_valid(conn, node)
    if streak < trust_after:
        return 0
    reward, submitter = _job_terms(conn, job_id)
    earned = [
        int(row.earned_wei)
        for row in conn.execute(
            select(trust_earnings.c.earned_wei).where(
                trust_earnings.c.address == node, trust_earnings.c.submitter != submitter
            )
        )
    ]
    if len(earned) < MIN_SUBMITTERS:
        return 0
    need = trust_after * reward
    share = -(-need // MIN_SUBMITTERS)  # no one submitter carries more than its share
    return streak if sum(min(e, share) for e in earned) >= need else 0


def _job_terms(conn: Connection, job_id: str) -> tuple[int, str]:
    """(reward per task in wei, submitter) of a job; reward 0 when it is not priced (unpaid)."""
    if not job_id:
        return 0, ""
    submitter = conn.execute(select(s.jobs.c.submitter).where(s.jobs.c.job_id == job_id)).scalar()
    reward = conn.execute(select(s.job_prices.c.reward_per_task_wei).where(s.job_prices.c.job_id == job_id)).scalar()
    return int(reward or 0), str(submitter or "").lower()


def _earn(conn: Connection, node: str, submitter: str, reward: int) -> None:
    t = trust_earnings.c
    insert_ignore(conn, trust_earnings, [dict(address=node, submitter=submitter, earned_wei=0, results=0)])
    row = conn.execute(select(t.earned_wei).where(t.address == node, t.submitter == submitter)).one()
    conn.execute(
        update(trust_earnings)
        .where(t.address == node, t.submitter == submitter)
        .values(earned_wei=int(row.earned_wei) + reward, results=t.results + 1)
    )
