"""The verification fee: checkers proven right are paid from what a job's escrow holds beyond its tasks.

An escrow charges whole rewards (a number of tasks at the job's price), while a spot-check
re-runs a fraction of a task. So a checker proven right wins one reward with probability
(rows it re-ran ÷ rows of the task it checked), drawn when its check settles from the
operating system's CSPRNG (no node can foresee or steer it): its expected pay is exactly its
share of the work, and every credit and every charge stays a whole reward, as the chain
counts them. A canary, a whole shard re-run, always wins. Wins stop at the fee the escrow
funded (its budget ÷ the reward, less the job's shards: tensorgrid.spec.verification.fee_tasks),
which also pays the job's decoys (repositories/ledger/decoys.py); the submitter gets back what
was not won with the rest of the escrow. In a job with decoys pay is by rows: a checker wins
with probability (rows it re-ran ÷ the job's shard rows), whatever the size of the task it
checked, so checking a decoy (all of its m rows) earns what checking m rows of a shard does. A job without a price
(no chain) pays no one, and a checker proven wrong is never paid.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, select

from coordinator.db import schema as s
from coordinator.repositories.ledger import credits as ledger
from coordinator.repositories.ledger import decoys

log = logging.getLogger("tensorgrid.coordinator.verification")

Draw = Callable[[int], int]  # randbelow(n): a uniform int in [0, n)


def pay_checkers(
    conn: Connection, root_id: str, nodes: Sequence[str], now_ms: int, draw: Draw = secrets.randbelow
) -> int:
    """Draw each named checker of the chain `root_id` for its fee and credit the winners, in the
    caller's transaction. Returns the rewards won (credited)."""
    chk = conn.execute(select(s.checks).where(s.checks.c.check_id == root_id)).first()
    if chk is None or not nodes:
        return 0
    funded, reward = decoys.fee_funded(conn, chk.job_id)
    if funded <= 0:
        return 0
    won = decoys.fee_won(conn, chk.job_id)
    subject_rows = decoys.unit_rows(conn, chk.job_id) or _rows(conn, chk.subject_task)
    winners: list[ledger.AcceptedResult] = []
    for node in dict.fromkeys(nodes):
        task_id, attempt, rows = check_receipt(conn, root_id, node)
        if not task_id or subject_rows <= 0 or draw(subject_rows) >= min(rows, subject_rows):
            continue
        if won + len(winners) >= funded:
            log.warning("job %s: its verification fee of %d rewards is spent; checker %s is not paid",
                        chk.job_id, funded, node)  # fmt: skip
            break
        winners.append((node, str(chk.job_id), task_id, attempt))
    paid = ledger.credit_results(conn, winners, now_ms) if winners else 0
    return paid // reward


def fee_won(conn: Connection, job_id: str) -> int:
    """Rewards the job's verification fee has paid so far (its checkers' and its decoys' live credits)."""
    return decoys.fee_won(conn, job_id)


def fee_budget(conn: Connection, job_id: str) -> tuple[int, int]:
    """(wei the escrow funded for checkers and decoys, wei they have won so far); (0, 0) for a job without a price."""
    funded, reward = decoys.fee_funded(conn, job_id)
    return (funded * reward, decoys.fee_won(conn, job_id) * reward) if funded > 0 else (0, 0)


def _rows(conn: Connection, task_id: str) -> int:
    return int(conn.execute(select(s.tasks.c.rows).where(s.tasks.c.task_id == task_id)).scalar() or 0)


def check_receipt(conn: Connection, root_id: str, node: str) -> tuple[str, int, int]:
    """(task id, attempt, rows) of the check in chain `root_id` that `node` signed a receipt for."""
    k, rc, t = s.checks, s.receipts, s.tasks
    row = conn.execute(
        select(rc.c.task_id, rc.c.attempt, t.c.rows)
        .join(k, k.c.check_id == rc.c.task_id)
        .join(t, t.c.task_id == rc.c.task_id)
        .where(k.c.root_id == root_id, rc.c.node == node)
        .order_by(rc.c.attempt.desc())
        .limit(1)
    ).first()
    return (str(row.task_id), int(row.attempt), int(row.rows)) if row else ("", 0, 0)
