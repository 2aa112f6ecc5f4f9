"""Epochs: turning credits into an on-chain Merkle root of cumulative earnings plus escrow charges.

An epoch is made in one transaction: the uncharged credits get the epoch number, every
node's cumulative charged earnings go into an EarningsTree whose leaves are stored (to
serve proofs later), and a `post_root` outbox item carries (epoch, root, per-job charges).
The database's epoch numbers are the chain's: Settlement accepts exactly lastEpoch + 1.

When a post_root reverts, lastEpoch does not move, so the number is still free. The
epoch is *unwound*: it and every later epoch not yet sent are deleted, their credits are
uncharged again, the outbox items queued behind it are superseded, and a fresh epoch with
the same number re-includes the credits (followed again by the superseded record_result and
release_job items, so a job is still charged before its escrow closes). A revert that names a
job (OverBudget, JobNotOpen: e.g. its escrow was closed on chain before the coordinator could
lock it, see ledger.escrow) voids that job's uncharged credits first and is resolved at once;
any other revert halts the outbox until `resolve_failed_epoch` is called.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import Connection, delete, func, insert, select, update

from coordinator.db import schema as s
from coordinator.db.sql import chunks, lock_ledger
from coordinator.repositories.ledger import outbox as ob
from coordinator.repositories.ledger.credits import void_job
from tensorgrid.chain.errors import ContractReverted
from tensorgrid.chain.merkle import EarningsTree

log = logging.getLogger("tensorgrid.coordinator.ledger")

_JOB_ERRORS = ("OverBudget", "JobNotOpen")  # custom errors whose first argument is the job id
_CLOSING = ("record_result", "release_job")  # close an escrow: always after the post_root charging it


def post_epoch(conn: Connection, now_ms: int, *, force: bool = False) -> int | None:
    """Charge all uncharged credits in a new epoch and queue its post_root; return its number.

    None if there is nothing to charge (unless `force`: re-post the cumulative tree, e.g.
    after a root was revoked) or an earlier epoch failed and is not resolved yet.
    """
    lock_ledger(conn)
    failed = conn.execute(select(s.epochs.c.epoch).where(s.epochs.c.state == "failed")).first()
    if failed is not None:
        log.warning("epoch %s failed and is not resolved: no new epoch", failed.epoch)
        return None
    c = s.credits
    new = conn.execute(
        select(c.c.id, c.c.node, c.c.job_id, c.c.amount_wei).where(c.c.epoch.is_(None) & ~c.c.void).order_by(c.c.id)
    ).all()
    if not new and not force:
        return None
    per_node: dict[str, int] = defaultdict(int)
    per_job: dict[str, int] = defaultdict(int)
    for r in new:
        per_node[r.node] += int(r.amount_wei)
        per_job[r.job_id] += int(r.amount_wei)
    tasks = _paid_tasks(conn, per_job)
    ne = s.node_earnings
    charged = {r.node: int(r.charged_wei) for r in conn.execute(select(ne).order_by(ne.c.node).with_for_update())}
    cumulative = {n: charged.get(n, 0) + per_node.get(n, 0) for n in charged.keys() | per_node.keys()}
    cumulative = {n: v for n, v in cumulative.items() if v > 0}
    if not cumulative:
        return None
    tree = EarningsTree(cumulative)
    epoch = int(conn.execute(select(func.coalesce(func.max(s.epochs.c.epoch), 0))).scalar_one()) + 1
    key = f"post_root:{epoch}"
    charges = sorted((job, amount) for job, amount in per_job.items() if amount > 0)
    conn.execute(
        insert(s.epochs).values(
            epoch=epoch,
            root=tree.root.hex(),
            state="posting",
            total_wei=tree.total,
            charged_wei=sum(a for _, a in charges),
            outbox_key=key,
            error="",
            created_ms=now_ms,
            updated_ms=now_ms,
        )
    )
    conn.execute(
        insert(s.epoch_earnings), [dict(epoch=epoch, node=n, cumulative_wei=v) for n, v in sorted(cumulative.items())]
    )
    for ids in chunks([r.id for r in new]):
        conn.execute(update(c).where(c.c.id.in_(ids)).values(epoch=epoch))
    for node in sorted(per_node):
        conn.execute(update(ne).where(ne.c.node == node).values(charged_wei=cumulative[node]))
    payload = {
        "epoch": epoch,
        "root": tree.root.hex(),
        "charges": [[j, str(a)] for j, a in charges],  # wei, for the record
        "tasks": [[j, tasks[j]] for j, _ in charges],  # what postRoot is sent
    }
    ob.enqueue(conn, key, "post_root", payload, now_ms)
    log.info("epoch %s: %s credits, %s jobs charged %s wei, tree total %s wei", epoch, len(new), len(charges),
             sum(a for _, a in charges), tree.total)  # fmt: skip
    return epoch


def _paid_tasks(conn: Connection, per_job: dict[str, int]) -> dict[str, int]:
    """What the chain charges each job: a number of paid results, each at the job's reward.

    A task's credit is one reward; an endpoint batch's credit is one reward per request it
    answered (credits.credit_batches), so the count is the job's wei over its reward.
    """
    p = s.job_prices
    rewards = {
        r.job_id: int(r.reward_per_task_wei)
        for r in conn.execute(select(p.c.job_id, p.c.reward_per_task_wei).where(p.c.job_id.in_(sorted(per_job))))
    }
    tasks: dict[str, int] = {}
    for job, amount in per_job.items():
        reward = rewards.get(job, 0)
        if reward <= 0 or amount % reward:  # never written so: credits are whole rewards
            log.error("job %s: %s wei of credits is not a whole number of rewards of %s wei", job, amount, reward)
        tasks[job] = amount // reward if reward > 0 else 0
    return tasks


def has_uncharged(conn: Connection, job_id: str) -> bool:
    """Whether `job_id` has live credits no epoch has charged yet."""
    c = s.credits
    q = select(c.c.id).where((c.c.job_id == job_id) & c.c.epoch.is_(None) & ~c.c.void).limit(1)
    return conn.execute(q).first() is not None


def resolve_failed_epoch(conn: Connection, epoch: int, now_ms: int, void_jobs: Iterable[str] = ()) -> int | None:
    """Operator's way out of a halted outbox: void `void_jobs`, unwind the failed `epoch`, re-post.

    Returns the number of the epoch that replaces it (None if nothing is left to charge).
    """
    row = conn.execute(select(s.epochs).where(s.epochs.c.epoch == epoch)).first()
    if row is None or row.state != "failed":
        raise ValueError(f"epoch {epoch} is not a failed epoch")
    item = ob.get_item(conn, row.outbox_key)
    if item is None:
        raise ValueError(f"epoch {epoch} has no outbox item {row.outbox_key}")
    return unwind_and_repost(conn, item, now_ms, void_jobs)


def unwind_and_repost(
    conn: Connection, failed: ob.OutboxItem, now_ms: int, void_jobs: Iterable[str] = ()
) -> int | None:
    lock_ledger(conn)
    first = int(failed.payload["epoch"])
    gone = conn.execute(select(s.epochs.c.epoch, s.epochs.c.state).where(s.epochs.c.epoch >= first)).all()
    if any(r.state not in ("posting", "failed") for r in gone):
        raise ValueError(f"cannot unwind epoch {first}: a later epoch already reached the chain")
    # Everything queued behind the failed post was never signed (the queue is strict), so it
    # can be superseded; record_results are queued again after the replacement epoch.
    again: list[ob.OutboxItem] = []
    for later in ob.items(conn, states=("pending",), after_id=failed.id):
        if later.action in ("post_root", *_CLOSING):
            ob.supersede(conn, later.id, "cancelled", now_ms)
            if later.action in _CLOSING:
                again.append(later)
    c, ne, ee = s.credits, s.node_earnings, s.epoch_earnings
    conn.execute(update(c).where(c.c.epoch >= first).values(epoch=None))
    before = {r.node: int(r.cumulative_wei) for r in conn.execute(select(ee).where(ee.c.epoch == first - 1))}
    for r in conn.execute(select(ne).order_by(ne.c.node).with_for_update()).all():
        if int(r.charged_wei) != before.get(r.node, 0):
            conn.execute(update(ne).where(ne.c.node == r.node).values(charged_wei=before.get(r.node, 0)))
    conn.execute(delete(ee).where(ee.c.epoch >= first))
    conn.execute(delete(s.epochs).where(s.epochs.c.epoch >= first))
    ob.supersede(conn, failed.id, "failed", now_ms)
    for job in void_jobs:
        void_job(conn, job, failed.last_error or "voided by the operator")
    replacement = post_epoch(conn, now_ms)
    for closing in again:
        ob.enqueue(conn, f"{closing.action}:{closing.payload['job_id']}", closing.action, closing.payload, now_ms)
    log.warning("epoch %s unwound (%s); replaced by epoch %s", first, failed.last_error, replacement)
    return replacement


def job_named_by(error: ContractReverted) -> str | None:
    if error.error in _JOB_ERRORS and error.error_args and isinstance(error.error_args[0], bytes | bytearray):
        return bytes(error.error_args[0]).hex()
    return None


def mark_revoked(conn: Connection, epoch: int, now_ms: int) -> None:
    """Record that `epoch`'s root was revoked on chain: it no longer serves proofs.

    Its charges stay in the pool (the contract keeps them) and the next epoch's cumulative
    tree carries the earnings again; call post_epoch(force=True) if no new credits are due.
    """
    conn.execute(update(s.epochs).where(s.epochs.c.epoch == epoch).values(state="revoked", updated_ms=now_ms))
