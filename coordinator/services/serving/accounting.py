"""Paying replicas for what they served: counted in memory, written once a second.

The router hands every micro-batch whose receipt verified to `record`; nothing touches the
database then. `flush` (every FLUSH_S by `run`, and once more at stop) writes every pending
batch in one transaction through ledger.credits.credit_batches: one credit row per batch
(its node, the endpoint's job id, the batch's receipt task id, attempt 0, answered requests ×
the price), the same credits the epoch settlement charges escrows and pays nodes from.

Crash safety: a batch's credit is keyed by its receipt task id, so a flush that is retried,
or that committed before the coordinator died and is flushed again, pays it once; a batch
counted but not flushed when the process dies is paid when its node hands it to another replica
(`record_counted`, service.py) or comes back to this one within 10 s, else never (never twice).

The budget: the endpoint's price row holds budget_wei = price × max_requests. `remaining`
is what it still pays for, less what is counted and not yet written; a flush never credits
past it (the requests that do not fit are logged, unpaid). A free endpoint (no price row, or
price 0) is capped by its spec's max_requests, counted in memory since this process started
(no one is owed anything), or not at all when max_requests is 0.

Several coordinator replicas: each counts and flushes the batches it verified (a batch's
receipt reaches only the replica that routed its requests), and `refresh` (the serving sync,
every few seconds) re-reads the credited wei the others wrote, so `remaining` sees them. A
free endpoint's cap is counted per replica (nobody is owed anything either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

from sqlalchemy import Engine, select

from coordinator.db import schema as s
from coordinator.repositories.ledger import credits
from coordinator.services.runtime import Runtime
from coordinator.services.serving.hooks import ServedBatch

log = logging.getLogger("tensorgrid.coordinator.serving")
FLUSH_S = 1.0


@dataclass
class _Tally:
    endpoint_id: str
    node: str
    task_id: str  # the batch's receipt task id: what makes its credit unique
    requests: int


@dataclass
class _Terms:
    price: int  # wei per request; 0: free
    budget: int
    credited: int  # the price row's credited_wei as last read or written
    cap: int  # a free endpoint's max_requests (0: no cap)
    void: bool = False  # its escrow refused a charge: it pays for nothing more


class Accounting:
    """serving.hooks.Accounting over the ledger's credits (one engine; DB work on rt's threads)."""

    def __init__(self, rt: Runtime, engine: Engine, *, flush_s: float = FLUSH_S) -> None:
        self.rt = rt
        self.engine = engine
        self.flush_s = flush_s
        self._terms: dict[str, _Terms] = {}
        self._pending: dict[str, _Tally] = {}  # batch task id → tally, not yet written
        self._flushing: dict[str, _Tally] = {}  # being written by the flush in progress
        self._void_after: dict[str, str] = {}  # voided while being written: taken back after
        self._free_served: dict[str, int] = {}
        # requests per endpoint counted and not yet written (pending + flushing): `remaining`
        # runs on every call, so it is kept as tallies come and go rather than summed
        self._unwritten: dict[str, int] = {}
        self._lock = asyncio.Lock()

    # ---- the router's calls (synchronous, in memory) ------------------------------------------
    def record(self, batch: ServedBatch) -> bool:
        """Count the batch's answered requests for its node (written by the next flush); True
        when it is owed a credit now pending."""
        return self.record_counted(batch.endpoint_id, batch.node, batch.receipt.task_id, batch.answered)

    def record_counted(self, endpoint_id: str, node: str, task_id: str, answered: int) -> bool:
        """Count a batch by its parts: one verified here (record), or one another replica
        verified and counted, handed in by its node (its tag checked by the router)."""
        if answered <= 0 or task_id in self._pending or task_id in self._flushing:
            return False  # the same batch twice is counted once
        terms = self._terms_of(endpoint_id)
        if terms.void:
            return False
        if terms.price == 0:
            self._free_served[endpoint_id] = self._free_served.get(endpoint_id, 0) + answered
            return False
        self._pending[task_id] = _Tally(endpoint_id, node, task_id, answered)
        self._count(self._pending[task_id], +1)
        return True

    def remaining(self, endpoint_id: str) -> int | None:
        """Requests the budget still pays for, less those counted and not yet written; None: no cap."""
        terms = self._terms_of(endpoint_id)
        if terms.void:
            return 0
        if terms.price == 0:
            if terms.cap == 0:
                return None
            return max(0, terms.cap - self._free_served.get(endpoint_id, 0))
        left = terms.budget - terms.credited - self._unwritten_wei(endpoint_id)
        return max(0, left // terms.price)

    def spent_wei(self, endpoint_id: str) -> int:
        """Wei credited to nodes for this endpoint (by any run of the coordinator), written or not."""
        terms = self._terms_of(endpoint_id)
        return terms.credited + self._unwritten_wei(endpoint_id) if terms.price else 0

    def void(self, batch: ServedBatch, reason: str) -> None:
        """A caught batch is not paid: dropped if not written yet, else its credit is taken back."""
        task_id = batch.receipt.task_id
        if (dropped := self._pending.pop(task_id, None)) is not None:
            self._count(dropped, -1)
            log.warning("batch %s of endpoint %s is not paid: %s", task_id[:12], batch.endpoint_id[:12], reason)
        elif task_id in self._flushing:
            self._void_after[task_id] = reason
        else:
            self.rt.spawn(self._void_written(batch.endpoint_id, task_id, reason))

    # ---- writing ------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Write every pending batch's credit in one transaction; on failure they stay pending."""
        async with self._lock:
            if not self._pending:
                return
            self._flushing, self._pending = self._pending, {}
            try:
                credited = await self.rt.db_bulk(self._write, list(self._flushing.values()), self.rt.now_ms())
            except Exception:  # kept for the next flush: credits are keyed by batch, never paid twice
                log.exception("writing %d served batches' credits failed; will retry", len(self._flushing))
                kept = {k: v for k, v in self._flushing.items() if k not in self._void_after}
                for task_id in self._void_after:
                    self._count(self._flushing[task_id], -1)
                self._pending, self._void_after = {**kept, **self._pending}, {}
                self._flushing = {}
                return
            flushed, self._flushing = self._flushing, {}
            for tally in flushed.values():
                self._count(tally, -1)
            for endpoint_id, (total, void) in credited.items():
                if endpoint_id in self._terms:
                    self._terms[endpoint_id].credited = total
                    self._terms[endpoint_id].void = void
            voids, self._void_after = self._void_after, {}
        for task_id, reason in voids.items():
            await self._void_written(flushed[task_id].endpoint_id, task_id, reason)

    async def refresh(self, endpoint_ids: list[str]) -> None:
        """Re-read the credited wei (and void) of these paid endpoints: other replicas' flushes
        count against the budget too. Under the flush's lock, so no write of ours is half-seen."""
        ids = [e for e in endpoint_ids if e in self._terms and self._terms[e].price]
        if not ids:
            return
        async with self._lock:
            rows = await self.rt.db(self._read_credited, ids)
            for endpoint_id, (credited, void) in rows.items():
                terms = self._terms.get(endpoint_id)
                if terms is not None:
                    terms.credited, terms.void = credited, terms.void or void

    def _read_credited(self, endpoint_ids: list[str]) -> dict[str, tuple[int, bool]]:
        p = s.job_prices
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(p.c.job_id, p.c.credited_wei, p.c.void_reason).where(p.c.job_id.in_(endpoint_ids))
            )
            return {r.job_id: (int(r.credited_wei), bool(r.void_reason)) for r in rows}

    def _write(self, tallies: list[_Tally], now_ms: int) -> dict[str, tuple[int, bool]]:
        """credit_batches, then each endpoint's (credited total, void) as committed (the cache's truth)."""
        rows = [(t.node, t.endpoint_id, t.task_id, t.requests) for t in tallies]
        endpoints = sorted({t.endpoint_id for t in tallies})
        with self.engine.begin() as conn:
            credits.credit_batches(conn, rows, now_ms)
            p = s.job_prices
            return {
                r.job_id: (int(r.credited_wei), bool(r.void_reason))
                for r in conn.execute(
                    select(p.c.job_id, p.c.credited_wei, p.c.void_reason).where(p.c.job_id.in_(endpoints))
                )
            }

    async def _void_written(self, endpoint_id: str, task_id: str, reason: str) -> None:
        try:
            await self.rt.db_bulk(self._void, task_id, reason)
            credited = await self.rt.db(self._credited, endpoint_id)
        except Exception:
            log.exception("could not take back the credit of batch %s", task_id[:12])
            return
        if endpoint_id in self._terms and credited is not None:
            self._terms[endpoint_id].credited = credited

    def _void(self, task_id: str, reason: str) -> int:
        with self.engine.begin() as conn:
            return credits.void_credit(conn, task_id, 0, reason)

    def _credited(self, endpoint_id: str) -> int | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(s.job_prices.c.credited_wei).where(s.job_prices.c.job_id == endpoint_id)
            ).scalar_one_or_none()
        return None if value is None else int(value)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every flush_s until `stop` is set, then once more (also when cancelled)."""
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.flush_s)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())

    # ---- the endpoint's terms -----------------------------------------------------------------
    def _unwritten_wei(self, endpoint_id: str) -> int:
        return self._unwritten.get(endpoint_id, 0) * self._terms[endpoint_id].price

    def _count(self, tally: _Tally, sign: int) -> None:
        """A tally became unwritten (+1) or written, dropped or voided (-1)."""
        left = self._unwritten.get(tally.endpoint_id, 0) + sign * tally.requests
        if left:
            self._unwritten[tally.endpoint_id] = left
        else:
            self._unwritten.pop(tally.endpoint_id, None)

    def _terms_of(self, endpoint_id: str) -> _Terms:
        """The endpoint's price row (and spec cap), read once per endpoint and kept in memory.

        The one read is synchronous: the router asks from the event loop, once per endpoint
        for this process's life (a primary-key lookup); every later answer is from memory.
        """
        terms = self._terms.get(endpoint_id)
        if terms is None:
            terms = self._terms[endpoint_id] = self._load(endpoint_id)
        return terms

    def _load(self, endpoint_id: str) -> _Terms:
        with self.engine.connect() as conn:
            price = conn.execute(select(s.job_prices).where(s.job_prices.c.job_id == endpoint_id)).first()
            spec = conn.execute(select(s.jobs.c.spec_json).where(s.jobs.c.job_id == endpoint_id)).scalar()
        cap = 0
        if spec is not None:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                cap = int(json.loads(bytes(spec)).get("max_requests", 0) or 0)
        if price is None or int(price.reward_per_task_wei) == 0:
            return _Terms(0, 0, 0, cap)
        each, budget, credited = int(price.reward_per_task_wei), int(price.budget_wei), int(price.credited_wei)
        return _Terms(each, budget, credited, cap, void=bool(price.void_reason))
