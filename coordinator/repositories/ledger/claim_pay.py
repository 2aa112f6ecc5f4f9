"""Pay for a proven failure: a node whose claim that a task's input fails (repositories.claims)
the referee's own run confirmed is paid for the work the submitter's bad input took.

How much: the referee's failed run knows how far it got before the failure (the rows, in whole
batches, it ran cleanly; a training task's inner steps done before the one that raised or passed
the memory limit, as the referee's child counted them, bounded by what the coordinator asked of
it: services.verification.review_parts.steps_done), out of the task's work. Each such claim
wins one whole reward with probability done / work, drawn once from the OS CSPRNG when the claim
is confirmed and remembered (failure_claims.won), as decoys and checkers are paid by rows
(repositories/ledger/decoys.py): the expected pay is the share of the task's work that ran, and
every credit and every on-chain charge stays a whole reward. A failure on the first batch pays
nothing; one on the last pays almost a whole reward.

Who: claims the referee's failed run confirmed (verdict "failed"), and a later claim on the same
task, believed because of that run (the referee reproduced the failure on the very input it was
leased). Never a claim confirmed without a run: the second-claim rule of kinds the referee does
not review, or QUORUM more nodes after an undecided review (no proof: colluders would be paid for
their lie). A claim the referee's clean run disproved earns nothing, and keeps its refusal.

From what, and when: the job's escrow, through the ledger's credits (credits.credit_results:
node earnings, epochs, the Merkle root, and postRoot, which charges a job whole rewards up to
the tasks its escrow funded). While the job runs every reward of its escrow is owed to the tasks
it has yet to run and to its verification fee (which takes every reward beyond its shards:
fee_tasks), so a win waits for the job to end, which a task whose input fails makes it do: in the
verdict's own transaction when the program raised on the referee too (the task ends at once,
repositories.reviews), else once its attempts are spent; a training job goes on without a task the
referee's run failed for good (it ends alone: tasks.end_task), so its claimants wait for its end
(its last round, or its failure). An ended job pays its claimants'
wins from what it did not spend, at once when nothing else may still be credited (a result
waiting for its check or audit holds its reward back), else just before its last charge
(ledger.escrow.release_ended_jobs, ledger.job_finished); a win with no room even then is not
paid (logged), so nothing is ever credited beyond the escrow. The credit's key is
(claim_credit_id(task, node), 0): however often the payers run (a restart, two replicas), a win
is credited once.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, func, select, update

from coordinator.db import schema as s
from coordinator.db.events import append_event
from coordinator.repositories.ledger import credits as ledger

log = logging.getLogger("tensorgrid.coordinator.ledger")

Draw = Callable[[int], int]  # randbelow(n): a uniform int in [0, n)
EVENT = "claims_paid"  # the job event that says what a failed task's claimants won and were paid
_OPEN_CHECKS = ("open", "disputed")  # repositories.jobs.OPEN_CHECK_STATES (the ledger sits below jobs)
_RUNNING = ("queued", "running")


def claim_credit_id(task_id: str, node: str) -> str:
    """The credits row key (with attempt 0) of `node`'s pay for its claim on the task."""
    return hashlib.sha256(f"claim-pay:{task_id}:{node.lower()}".encode()).hexdigest()


def entitle(
    conn: Connection, task_id: str, nodes: Sequence[str], done: int, work: int, now_ms: int, draw: Draw | None = None
) -> list[tuple[str, bool]]:
    """Draw the pay of `nodes`' claims on the task, which the referee's failed run confirmed
    after `done` of the task's `work` (rows or inner steps); each not drawn before. In the
    caller's transaction; the (node, won) drawn now, also said in the job's events."""
    draw = draw or secrets.randbelow  # looked up per call: never a seeded generator in production
    c = s.failure_claims.c
    rows = conn.execute(
        select(c.node, c.won).where(c.task_id == task_id, c.node.in_(sorted(nodes))).order_by(c.node)
    ).all()
    work = max(0, work)
    done = min(max(0, done), work)
    drawn: list[tuple[str, bool]] = []
    for r in rows:
        if r.won is not None:
            continue  # drawn before: the same answer
        won = work > 0 and draw(work) < done
        conn.execute(
            update(s.failure_claims)
            .where(c.task_id == task_id, c.node == r.node)
            .values(work_done=done, work_total=work, won=won)
        )
        drawn.append((str(r.node), won))
    if drawn:
        task = conn.execute(select(s.tasks.c.job_id, s.tasks.c.idx).where(s.tasks.c.task_id == task_id)).first()
        if task is not None:
            said = ", ".join(f"{node} {'won one reward' if won else 'won nothing'}" for node, won in drawn)
            odds = f"so each wins one reward with probability {done}/{work}" if work else "so there is nothing to pay"
            message = (
                f"claimants of task {task.idx} paid for the failure: the referee's run failed after {done} of its "
                f"{work} units of work, {odds}: {said}"
            )
            append_event(conn, task.job_id, EVENT, now_ms, task_index=task.idx, message=message[:2000])
    return drawn


def referee_failed(conn: Connection, task_id: str) -> tuple[int, int] | None:
    """(done, work) of the referee's failed run of the task, if its claims were confirmed by one."""
    c = s.failure_claims.c
    row = conn.execute(
        select(c.work_done, c.work_total)
        .where(c.task_id == task_id, c.verdict == "failed", c.work_total.is_not(None))
        .limit(1)
    ).first()
    return None if row is None else (int(row.work_done), int(row.work_total))


def pay(conn: Connection, job_id: str, now_ms: int, *, final: bool = False) -> int:
    """Credit the job's claims that won their draw and are not paid yet, once it has ended, as far
    as its escrow has room beyond what it may still owe others (see the module's docstring); final:
    its last charge is being made (nothing else can be credited after it). In the caller's
    transaction, after whatever ended the job; the rewards credited."""
    state = conn.execute(select(s.jobs.c.state).where(s.jobs.c.job_id == job_id)).scalar()
    if state is None or state in _RUNNING:
        return 0  # its escrow is owed to the tasks it has yet to run (the fee takes every reward beyond)
    c, t = s.failure_claims.c, s.tasks.c
    winners = conn.execute(
        select(c.task_id, c.node, t.idx)
        .join(s.tasks, t.task_id == c.task_id)
        .where(t.job_id == job_id, c.won.is_(True))
        .order_by(c.claimed_ms, c.task_id, c.node)
    ).all()
    if not winners:
        return 0
    keys = {claim_credit_id(w.task_id, w.node): w for w in winners}
    cr = s.credits.c
    paid = set(conn.execute(select(cr.task_id).where(cr.task_id.in_(sorted(keys)), cr.attempt == 0)).scalars())
    unpaid = [w for key, w in keys.items() if key not in paid]
    if not unpaid:
        return 0
    price = conn.execute(select(s.job_prices).where(s.job_prices.c.job_id == job_id).with_for_update()).first()
    if price is None or int(price.reward_per_task_wei) <= 0 or price.void_reason:
        return 0
    reward = int(price.reward_per_task_wei)
    room = (int(price.budget_wei) - int(price.credited_wei)) // reward - (0 if final else _owed(conn, job_id))
    if room < len(unpaid):
        log.warning("job %s: no room in its escrow for %d of its claimants' wins", job_id, len(unpaid) - max(room, 0))
    now = unpaid[: max(room, 0)]
    credited = ledger.credit_results(
        conn, [(str(w.node), job_id, claim_credit_id(w.task_id, w.node), 0) for w in now], now_ms
    )
    for w in now:
        message = f"claimant {w.node} of task {w.idx} paid one reward ({reward} wei) for its run of the failed task"
        append_event(conn, job_id, EVENT, now_ms, task_index=w.idx, node=str(w.node), message=message)
    return credited // reward


def unpaid_wins(conn: Connection, job_id: str) -> int:
    """The job's claims that won their draw and are not credited yet (for its end: ledger.escrow)."""
    c, t = s.failure_claims.c, s.tasks.c
    rows = conn.execute(
        select(c.task_id, c.node).join(s.tasks, t.task_id == c.task_id).where(t.job_id == job_id, c.won.is_(True))
    ).all()
    if not rows:
        return 0
    keys = sorted(claim_credit_id(r.task_id, r.node) for r in rows)
    cr = s.credits.c
    paid = conn.execute(select(func.count()).where(cr.task_id.in_(keys), cr.attempt == 0)).scalar_one()
    return len(rows) - int(paid)


def claims_pay(conn: Connection, job_id: str) -> tuple[int, int]:
    """(claims of the job drawn for their pay, wei they were credited), for its report."""
    c, t = s.failure_claims.c, s.tasks.c
    rows = conn.execute(
        select(c.task_id, c.node).join(s.tasks, t.task_id == c.task_id).where(t.job_id == job_id, c.won.is_not(None))
    ).all()
    if not rows:
        return 0, 0
    keys = sorted(claim_credit_id(r.task_id, r.node) for r in rows)
    cr = s.credits.c
    paid = conn.execute(select(cr.amount_wei).where(cr.task_id.in_(keys), cr.attempt == 0, ~cr.void)).scalars()
    return len(rows), sum(int(a) for a in paid)


def _owed(conn: Connection, job_id: str) -> int:
    """Rewards an ended job may still credit others: a result waiting for its check, a training
    result waiting for its audit."""
    k, a = s.checks.c, s.training_audits.c
    waiting = conn.execute(
        select(func.count()).where(k.job_id == job_id, k.state.in_(_OPEN_CHECKS), k.check_id == k.root_id)
    ).scalar_one()
    audits = conn.execute(select(func.count()).where(a.job_id == job_id, a.state == "pending")).scalar_one()
    return int(waiting) + int(audits)
