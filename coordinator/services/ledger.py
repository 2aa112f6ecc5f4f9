"""The ledger as the runtime uses it: each method one transaction over the ledger's SQL, and the
outbox worker that takes its chain writes to the chain."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select

from coordinator.db import schema as s
from coordinator.repositories.ledger import credits, epochs, escrow, slashing
from coordinator.repositories.ledger.ledger import Earnings, EpochRecord, earnings, epoch_record, job_finished, status
from coordinator.repositories.ledger.listener import LedgerListener
from coordinator.services.runtime import Runtime
from tensorgrid.chain.merkle import EarningsTree
from tensorgrid.crypto import normalize_address

if TYPE_CHECKING:
    from coordinator.services.outbox import Outbox
    from tensorgrid.chain.client import ChainClient

log = logging.getLogger("tensorgrid.coordinator")


class Ledger:
    """The ledger over one engine; each method is its own transaction. Methods are synchronous."""

    def __init__(self, engine: Engine, *, tree_cache: int = 8) -> None:
        self.engine = engine
        self._trees: OrderedDict[str, EarningsTree] = OrderedDict()
        self._tree_cache = tree_cache

    def set_job_price(self, job_id: str, reward_per_task_wei: int, budget_wei: int) -> None:
        credits.set_job_price(self.engine, job_id, reward_per_task_wei, budget_wei)

    def credit_results(self, accepted: list[credits.AcceptedResult], now_ms: int) -> int:
        with self.engine.begin() as conn:
            return credits.credit_results(conn, accepted, now_ms)

    def post_epoch(self, now_ms: int, *, force: bool = False) -> int | None:
        with self.engine.begin() as conn:
            return epochs.post_epoch(conn, now_ms, force=force)

    def job_finished(self, job_id: str, result_hash: str, now_ms: int) -> bool:
        with self.engine.begin() as conn:
            return job_finished(conn, job_id, result_hash, now_ms)

    def finish_succeeded_jobs(self, now_ms: int) -> int:
        """job_finished for every priced, succeeded job whose result is not yet queued for the chain.

        Run on the settlement timer, so a result is recorded even when the coordinator died
        between assembling it and queueing it.
        """
        j, o = s.jobs, s.outbox
        queued = select(o.c.key).where(o.c.key == "record_result:" + j.c.job_id).exists()
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(j.c.job_id, j.c.result_sha)
                .join(s.job_prices, s.job_prices.c.job_id == j.c.job_id)
                .where(j.c.state == "succeeded", ~queued)
            ).all()
            for row in rows:
                job_finished(conn, row.job_id, row.result_sha, now_ms)
        return len(rows)

    def close_ended_jobs(self, now_ms: int) -> int:
        """Release the escrows of locked jobs that ended without a result (after their last charge)."""
        with self.engine.begin() as conn:
            return escrow.release_ended_jobs(conn, now_ms)

    def execute_due_slashes(self, now_ms: int) -> int:
        """Queue executeSlash for the proposals whose veto delay is over."""
        with self.engine.begin() as conn:
            return slashing.queue_due_slashes(conn, now_ms)

    def result_withheld(self, job_id: str) -> bool:
        """Whether the job's result is held back until its escrow lock is confirmed on chain."""
        with self.engine.connect() as conn:
            return escrow.result_withheld(conn, job_id)

    def withheld_blob(self, sha256: str) -> str | None:
        """The job whose held-back result is this blob, if any."""
        with self.engine.connect() as conn:
            return escrow.withheld_blob(conn, sha256)

    def earnings(self, node: str) -> Earnings:
        with self.engine.connect() as conn:
            result = earnings(conn, node, self._trees)
        while len(self._trees) > self._tree_cache:
            self._trees.popitem(last=False)
        return result

    def epoch(self, epoch: int = 0) -> EpochRecord | None:
        """Epoch `epoch` (0: the latest) and its leaves; None if there is none."""
        with self.engine.connect() as conn:
            return epoch_record(conn, epoch)

    def slashed_wei(self, node: str) -> int:
        """Stake taken from `node` on chain by confirmed slashes."""
        address = normalize_address(node)
        with self.engine.connect() as conn:
            return slashing.slashed_by_node(conn, [address]).get(address, 0)

    def resolve_failed_epoch(self, epoch: int, now_ms: int, void_jobs: Iterable[str] = ()) -> int | None:
        with self.engine.begin() as conn:
            return epochs.resolve_failed_epoch(conn, epoch, now_ms, void_jobs)

    def mark_revoked(self, epoch: int, now_ms: int) -> None:
        with self.engine.begin() as conn:
            epochs.mark_revoked(conn, epoch, now_ms)

    def status(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return status(conn)

    def outbox(self, chain: ChainClient, **options: Any) -> Outbox:
        """The outbox worker for this ledger's database, sending as `chain`'s account."""
        from coordinator.services.outbox import Outbox  # web3 loads only on a chain-settled grid

        return Outbox(self.engine, chain, listener=LedgerListener(chain), **options)

    async def settle_loop(self, rt: Runtime, interval_s: float) -> None:
        """Each epoch: queue results (or releases) of ended jobs, post everyone's earnings as one root,
        execute the slashes whose veto delay is over."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                finished = await rt.db_bulk(self.finish_succeeded_jobs, rt.now_ms())
                finished += await rt.db_bulk(self.close_ended_jobs, rt.now_ms())
                epoch = await rt.db_bulk(self.post_epoch, rt.now_ms())
                await rt.db_bulk(self.execute_due_slashes, rt.now_ms())
            except Exception:  # a DB hiccup must not end the loop
                log.exception("settlement step failed")
                continue
            if finished or epoch:
                log.info("settlement: epoch %s queued, %d job results queued for the chain", epoch, finished)
