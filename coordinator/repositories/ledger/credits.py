"""Job prices and node credits: what each accepted result earns, before any epoch charges it.

Every amount is an exact int of wei. Running totals (a job's credited wei, a node's earned
wei) are updated in the transaction that changes the credits, under row locks, because
SQLite cannot add the decimal text it stores wei as.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select, update

from coordinator.db import schema as s
from coordinator.db.rawsql import Raw
from coordinator.db.sql import insert_ignore, transaction
from coordinator.repositories.ledger import decoys
from tensorgrid.crypto import normalize_address

log = logging.getLogger("tensorgrid.coordinator.ledger")

AcceptedResult = tuple[str, str, str, int]  # (node, job_id, task_id, attempt)
# (node, job_id, task_id, requests): one served micro-batch of an endpoint (services/serving/accounting)
ServedBatchCredit = tuple[str, str, str, int]
RELEASE_ACTION = "release_job"  # the outbox action closing an ended job's escrow (ledger.escrow)
_PRICE_RAW = Raw(select(s.job_prices).where(s.job_prices.c.job_id == bindparam("b_job")).with_for_update())


def set_job_price(conn_or_engine: Connection | Engine, job_id: str, reward_per_task_wei: int, budget_wei: int) -> None:
    """Price a job: each accepted task earns its node `reward_per_task_wei`, up to `budget_wei` in all.

    Call it in the job-creation transaction (or right after) for every job with an escrow on
    chain; a job without a price is free and never touches the chain. Setting it again
    updates the numbers (the budget cannot drop below what is already credited).
    """
    for name, value in (("reward_per_task_wei", reward_per_task_wei), ("budget_wei", budget_wei)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int of wei, got {value!r}")
    with transaction(conn_or_engine) as conn:
        row = {
            "job_id": job_id,
            "reward_per_task_wei": reward_per_task_wei,
            "budget_wei": budget_wei,
            "credited_wei": 0,
            "void_reason": "",
        }
        insert_ignore(conn, s.job_prices, [row])
        current = conn.execute(select(s.job_prices).where(s.job_prices.c.job_id == job_id).with_for_update()).one()
        if budget_wei < current.credited_wei:
            raise ValueError(f"job {job_id}: budget {budget_wei} is below the {current.credited_wei} wei credited")
        if (current.reward_per_task_wei, current.budget_wei) != (reward_per_task_wei, budget_wei):
            conn.execute(
                update(s.job_prices)
                .where(s.job_prices.c.job_id == job_id)
                .values(reward_per_task_wei=reward_per_task_wei, budget_wei=budget_wei)
            )


def credit_results(conn: Connection, accepted: Sequence[AcceptedResult], now_ms: int) -> int:
    """Credit each accepted result's node with its job's reward, in the caller's transaction.

    Skips jobs without a price (free, or the chain is off), void jobs, a decoy that lost its
    draw (decoys.by_rows), a (task, attempt) already credited, and any credit that would take a
    job past its budget (logged: the escrow could not pay it). Returns the wei credited.
    """
    job_ids = sorted({job for _, job, _, _ in accepted})
    if not job_ids:
        return 0
    # One prebuilt statement per job (sorted: the same lock order as before) rather than an IN
    # list built per call: a batch names one or two jobs, and building and compiling the IN
    # select cost more than the whole rest of accepting a result.
    prices = {job: r for job in job_ids if (r := _PRICE_RAW.first(conn, {"b_job": job})) is not None}
    # a decoy earns its whole reward only when its draw wins (pay by rows: decoys.by_rows)
    wanted = decoys.by_rows(conn, [a for a in accepted if a[1] in prices])
    if not wanted:
        return 0
    c = s.credits
    seen = {
        (r.task_id, int(r.attempt))
        for r in conn.execute(
            select(c.c.task_id, c.c.attempt).where(c.c.task_id.in_(sorted({task for _, _, task, _ in wanted})))
        )
    }
    credited = {job: int(p.credited_wei) for job, p in prices.items()}
    per_node: dict[str, int] = defaultdict(int)
    rows = []
    for node, job, task, attempt in wanted:
        price = prices[job]
        amount = int(price.reward_per_task_wei)
        if (task, attempt) in seen or amount == 0 or price.void_reason:
            continue
        if credited[job] + amount > price.budget_wei:
            log.warning("job %s: budget %s wei spent; task %s is not credited", job, price.budget_wei, task)
            continue
        seen.add((task, attempt))
        credited[job] += amount
        address = normalize_address(node)
        per_node[address] += amount
        rows.append(
            dict(
                node=address,
                job_id=job,
                task_id=task,
                attempt=attempt,
                amount_wei=amount,
                created_ms=now_ms,
                void=False,
            )
        )
    _write_credits(conn, rows, credited, prices, per_node)
    return sum(per_node.values())


def _write_credits(
    conn: Connection, rows: list[dict[str, object]], credited: Mapping[str, int], prices: Mapping[str, Any],
    per_node: Mapping[str, int],
) -> None:  # fmt: skip
    """Insert the credit rows, move each job's running credited total and each node's earnings."""
    if not rows:
        return
    conn.execute(s.credits.insert(), rows)
    for job, total in credited.items():
        if total != prices[job].credited_wei:
            conn.execute(update(s.job_prices).where(s.job_prices.c.job_id == job).values(credited_wei=total))
    add_earned(conn, per_node)


def credit_batches(conn: Connection, batches: Sequence[ServedBatchCredit], now_ms: int) -> dict[str, int]:
    """Credit each served micro-batch's node with requests × its endpoint's price, in the caller's transaction.

    One credit row per batch: task_id = the batch's receipt task id, attempt 0, so a batch is
    credited once whatever flushes it again (the (task_id, attempt) key, as credit_results).
    Skips endpoints without a price, void ones and batches already credited (or voided). A
    batch that would pass the budget is paid for the requests that fit (the rest is logged:
    the escrow cannot pay them). Returns the wei credited per batch task id (paid ones only).
    """
    job_ids = sorted({job for _, job, _, _ in batches})
    prices = {job: r for job in job_ids if (r := _PRICE_RAW.first(conn, {"b_job": job})) is not None}
    closing = _closing(conn, sorted(prices))
    for job in closing:
        log.warning("endpoint %s: its escrow is being released; batches receipted after that are not credited", job)
    wanted = [b for b in batches if b[1] in prices and b[1] not in closing and b[3] > 0]
    if not wanted:
        return {}
    c = s.credits
    seen = {
        str(r.task_id)
        for r in conn.execute(
            select(c.c.task_id).where(c.c.task_id.in_(sorted({t for _, _, t, _ in wanted})) & (c.c.attempt == 0))
        )
    }
    credited = {job: int(p.credited_wei) for job, p in prices.items()}
    per_node: dict[str, int] = defaultdict(int)
    paid: dict[str, int] = {}
    rows = []
    for node, job, task, requests in wanted:
        price = prices[job]
        each = int(price.reward_per_task_wei)
        if task in seen or each == 0 or price.void_reason:
            continue
        fits = min(requests, (int(price.budget_wei) - credited[job]) // each)
        if fits < requests:
            log.warning("endpoint %s: budget %s wei spent; %d of %d requests of batch %s are not credited",
                        job, price.budget_wei, requests - fits, requests, task)  # fmt: skip
        if fits <= 0:
            continue
        amount = fits * each
        seen.add(task)
        credited[job] += amount
        address = normalize_address(node)
        per_node[address] += amount
        paid[task] = amount
        rows.append(
            dict(node=address, job_id=job, task_id=task, attempt=0, amount_wei=amount, created_ms=now_ms, void=False)
        )
    _write_credits(conn, rows, credited, prices, per_node)
    return paid


def _closing(conn: Connection, job_ids: Sequence[str]) -> set[str]:
    """The jobs whose escrow release is queued (ledger.escrow.release_ended_jobs): a credit
    written now would be charged after the escrow closed, refused on chain and voided, so it
    is never written. Read under the price rows' locks, which release_ended_jobs takes too."""
    if not job_ids:
        return set()
    keys = [f"{RELEASE_ACTION}:{job}" for job in job_ids]
    found = conn.execute(select(s.outbox.c.key).where(s.outbox.c.key.in_(keys))).scalars()
    return {key.split(":", 1)[1] for key in found}


def void_credit(conn: Connection, task_id: str, attempt: int, reason: str) -> int:
    """One credit is taken back (its result was proven wrong): void, off its job's credited
    total and its node's earnings. A credit an epoch already charged stays (the chain holds
    that money; a slash is the remedy). Returns the wei voided."""
    c = s.credits
    row = conn.execute(select(c).where((c.c.task_id == task_id) & (c.c.attempt == attempt)).with_for_update()).first()
    if row is None or row.void:
        return 0
    amount = int(row.amount_wei)
    if row.epoch is not None:
        log.warning("credit of %s for %s (%s) was charged in epoch %s: it stays paid", row.node, task_id, reason,
                    row.epoch)  # fmt: skip
        return 0
    price = _PRICE_RAW.first(conn, {"b_job": row.job_id})
    conn.execute(update(c).where(c.c.id == row.id).values(void=True))
    if price is not None:
        credited = int(price.credited_wei) - amount
        conn.execute(update(s.job_prices).where(s.job_prices.c.job_id == row.job_id).values(credited_wei=credited))
    add_earned(conn, {row.node: -amount})
    log.warning("credit of %s wei to %s for %s is void: %s", amount, row.node, task_id, reason)
    return amount


def add_earned(conn: Connection, deltas: Mapping[str, int]) -> None:
    """Add (or with negative deltas, take back) wei to nodes' running `earned_wei`."""
    nodes = sorted(deltas)
    if not nodes:
        return
    insert_ignore(conn, s.node_earnings, [dict(node=n, earned_wei=0, charged_wei=0) for n in nodes])
    ne = s.node_earnings
    current = {
        r.node: int(r.earned_wei)
        for r in conn.execute(
            select(ne.c.node, ne.c.earned_wei).where(ne.c.node.in_(nodes)).order_by(ne.c.node).with_for_update()
        )
    }
    for node in nodes:
        conn.execute(update(ne).where(ne.c.node == node).values(earned_wei=current[node] + deltas[node]))


def void_job(conn: Connection, job_id: str, reason: str) -> int:
    """The job's escrow refused a charge: its uncharged credits become void and it earns no more.

    Credits already charged by an epoch stay (the chain holds that money). Returns the wei voided.
    """
    c = s.credits
    rows = conn.execute(
        select(c.c.id, c.c.node, c.c.amount_wei).where((c.c.job_id == job_id) & c.c.epoch.is_(None) & ~c.c.void)
    ).all()
    per_node: dict[str, int] = defaultdict(int)
    for r in rows:
        per_node[r.node] -= int(r.amount_wei)
    price = conn.execute(select(s.job_prices).where(s.job_prices.c.job_id == job_id).with_for_update()).first()
    if price is not None:
        conn.execute(
            update(s.job_prices)
            .where(s.job_prices.c.job_id == job_id)
            .values(credited_wei=int(price.credited_wei) + sum(per_node.values()), void_reason=reason[:2000])
        )
    if rows:
        conn.execute(update(c).where((c.c.job_id == job_id) & c.c.epoch.is_(None) & ~c.c.void).values(void=True))
        add_earned(conn, per_node)
    voided = -sum(per_node.values())
    log.error("job %s is void (%s): %s wei of credits will not be paid", job_id, reason, voided)
    return voided
