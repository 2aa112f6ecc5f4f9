"""Pay by rows: a decoy (services/verification/decoys.py) and a checker earn one whole reward
with probability (rows they ran ÷ the rows one reward pays for), and the verification fee
that pays both.

A decoy is a few rows (a check's m) carved out of a shard. Paying it a whole reward would let
a node farm decoys; paying it nothing would make it recognisable by its pay. So when its
result is paid (accepted unchecked, or its check settles) one draw from the OS CSPRNG decides:
a whole reward with probability m / shard rows, else nothing, so its expected pay is its share
of the work and every credit stays a whole reward, as the chain counts them (charged ==
claimed). The draw is made once per attempt and remembered, so paying the same result again
never draws again. Wins come out of the verification fee the escrow funded beyond the job's
shards (fee_tasks), shared with the checkers (repositories/verification/fees.py): a win past
it is not paid (logged), so a job is never charged above its escrow and its shards' rewards
are never touched.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, bindparam, func, select, update

from coordinator.db import schema as s
from coordinator.db.rawsql import Raw

log = logging.getLogger("tensorgrid.coordinator.ledger")

Draw = Callable[[int], int]  # randbelow(n): a uniform int in [0, n)
AcceptedResult = tuple[str, str, str, int]  # (node, job_id, task_id, attempt), as credits.AcceptedResult
_DECOY_RAW = Raw(select(s.decoys).where(s.decoys.c.task_id == bindparam("b_task")).with_for_update())
_JOB_HAS_DECOYS = Raw(select(s.decoys.c.unit_rows).where(s.decoys.c.job_id == bindparam("b_job")).limit(1))


def by_rows(conn: Connection, accepted: Sequence[AcceptedResult], draw: Draw | None = None) -> list[AcceptedResult]:
    """The results among `accepted` that earn their whole reward, in the caller's transaction:
    every ordinary task's, and a decoy's whose draw wins (within the fee). One lookup per job,
    and per result only in jobs with decoys; the decoy row is locked, so two payers of one
    result draw once."""
    draw = draw or secrets.randbelow  # looked up per call: never a seeded generator in production
    with_decoys = {job for job in {a[1] for a in accepted} if unit_rows(conn, job)}  # one look per job
    out: list[AcceptedResult] = []
    pending: dict[str, int] = {}  # wins this call, per job, not yet credited
    for result in accepted:
        _, job, task, attempt = result
        row = _DECOY_RAW.first(conn, {"b_task": task}) if job in with_decoys else None
        if row is None:
            out.append(result)
            continue
        if int(row.drawn_attempt) == attempt:  # drawn before: the same answer
            if row.won:
                out.append(result)
            continue
        won = draw(int(row.unit_rows)) < int(row.rows)
        if won:
            funded, _ = fee_funded(conn, job)
            if fee_won(conn, job) + pending.get(job, 0) >= funded:
                log.warning("job %s: its verification fee of %d rewards is spent; decoy %s is not paid",
                            job, funded, task)  # fmt: skip
                won = False
        conn.execute(update(s.decoys).where(s.decoys.c.task_id == task).values(drawn_attempt=attempt, won=won))
        if won:
            pending[job] = pending.get(job, 0) + 1
            out.append(result)
    return out


def unit_rows(conn: Connection, job_id: str) -> int:
    """The rows one reward pays for in a job with decoys (its shard rows); 0 in a job without."""
    row = _JOB_HAS_DECOYS.first(conn, {"b_job": job_id})
    return int(row.unit_rows) if row is not None else 0


def decoy_count(conn: Connection, job_id: str) -> int:
    return int(conn.execute(select(func.count()).where(s.decoys.c.job_id == job_id)).scalar_one())


def fee_funded(conn: Connection, job_id: str) -> tuple[int, int]:
    """(rewards the escrow funded beyond the job's shards, the reward in wei); (0, 0) without a price.
    The shards are the job's tasks less its decoys (each shard is paid one whole reward)."""
    price = conn.execute(select(s.job_prices).where(s.job_prices.c.job_id == job_id)).first()
    if price is None or int(price.reward_per_task_wei) <= 0 or price.void_reason:
        return 0, 0
    reward = int(price.reward_per_task_wei)
    tasks = int(conn.execute(select(s.jobs.c.tasks_total).where(s.jobs.c.job_id == job_id)).scalar() or 0)
    return int(price.budget_wei) // reward - (tasks - decoy_count(conn, job_id)), reward


def fee_won(conn: Connection, job_id: str) -> int:
    """Rewards the job's verification fee has paid so far: live credits of its check tasks and of its decoys."""
    c, k, d = s.credits, s.checks, s.decoys
    checks = select(func.count()).select_from(c.join(k, k.c.check_id == c.c.task_id)).where(k.c.job_id == job_id)
    decoys = select(func.count()).select_from(c.join(d, d.c.task_id == c.c.task_id)).where(d.c.job_id == job_id)
    return int(conn.execute(checks.where(~c.c.void)).scalar_one()) + int(
        conn.execute(decoys.where(~c.c.void)).scalar_one()
    )


def decoy_pay(conn: Connection, job_id: str) -> tuple[int, int, int]:
    """(decoys, decoys drawn, wei they were credited) of a job, for its report."""
    d, c = s.decoys, s.credits
    count = int(conn.execute(select(func.count()).where(d.c.job_id == job_id)).scalar_one())
    if count == 0:
        return 0, 0, 0
    drawn = int(conn.execute(select(func.count()).where(d.c.job_id == job_id, d.c.drawn_attempt >= 0)).scalar_one())
    paid = conn.execute(
        select(c.c.amount_wei).select_from(c.join(d, d.c.task_id == c.c.task_id)).where(d.c.job_id == job_id, ~c.c.void)
    ).scalars()
    return count, drawn, sum(int(a) for a in paid)
