"""The coordinator's runtime: state, blobs, verifier and the background loops, in one object."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from coordinator.aggregator import assemble
from coordinator.chain import ChainGate
from coordinator.commits import GroupCommitter
from coordinator.config import CoordinatorConfig
from coordinator.errors import Conflict, Rejected
from coordinator.events import EventHub
from coordinator.ledger import Ledger
from coordinator.storage import ResultItem, State, TaskRecord
from coordinator.training import RoundManager
from coordinator.verification.manager import Verification
from coordinator.verifier import Verifier
from tensorgrid.blobs import BlobStore
from tensorgrid.crypto import load_or_create_key_file
from tensorgrid.errors import TensorGridError
from tensorgrid.types import Domain, Lease

log = logging.getLogger("tensorgrid.coordinator")
T = TypeVar("T")
LEASE_BOOK_SIZE = 200_000


def now_ms() -> int:
    return int(time.time() * 1000)


class Coordinator:
    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.state = State(config.db_url)
        self.blobs = BlobStore(config.blob_dir, config.limits.max_blob_bytes)
        self.identity, _ = load_or_create_key_file(config.data_dir / "coordinator.key")
        self.chain: ChainGate | None = None
        if config.chain_rpc:
            if config.deployment is None:
                raise TensorGridError("--chain-rpc needs --deployment (the file the deploy step wrote)")
            self.chain = ChainGate.open(config.chain_rpc, config.deployment, self.identity)
            self.domain = self.chain.deployment.domain  # receipts are evidence on this chain
        else:
            self.domain = Domain(
                config.domain_name,
                config.domain_version,
                config.chain_id,
                config.verifying_contract or self.identity.address,
            )
        self.verifier = Verifier(self.domain)
        self.ledger = Ledger(self.state.engine)
        self.outbox = self.ledger.outbox(self.chain.client) if self.chain is not None else None
        self._stopping = asyncio.Event()
        self.rounds = RoundManager(self)
        self.hub = EventHub()
        self.challenge_secret = bytes.fromhex(self.state.meta_value("challenge_secret", secrets.token_hex(32)))
        # SQLite has one writer: one DB thread avoids lock contention. PostgreSQL takes a pool.
        self._db_pool = ThreadPoolExecutor(1 if self.state.is_sqlite else 8, thread_name_prefix="db")
        self.inline_db = self.state.is_sqlite
        self._work_pool = ThreadPoolExecutor(2, thread_name_prefix="work")
        # Leases this process granted, so a result can be pre-checked without a DB read;
        # the authoritative checks run again inside accept_result's transaction.
        self.lease_book: dict[str, TaskRecord] = {}
        self.results: GroupCommitter[ResultItem, tuple[str, bool]] = GroupCommitter(self._accept_results)
        self.verification = Verification(
            self.state,
            self.blobs,
            bytes.fromhex(self.state.meta_value("verification_secret", secrets.token_hex(32))),
            self.db,
            self.work,
            self.chain.client.stake_of if self.chain is not None else None,
        )
        barred = self.verification.barred_jobs if self.chain is not None else None
        self.leases: GroupCommitter[tuple[str, int], tuple[list[Lease], int]] = GroupCommitter(
            lambda requests: self.db(self.state.lease_many, requests, now_ms(), config.timing, barred)
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._aggregating: set[str] = set()

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a short state method. On SQLite it runs inline: a local transaction takes well
        under a millisecond, and handing it to a thread costs more than that (measured: inline
        doubles task dispatch). On PostgreSQL it runs on the DB thread pool, off the loop."""
        if self.inline_db:
            return fn(*args, **kwargs)
        return await self.db_bulk(fn, *args, **kwargs)

    async def db_bulk(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a state method that may take long (big inserts, scans) on the DB thread(s)."""
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, functools.partial(fn, *args, **kwargs))

    async def work(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blob-heavy work (splitting, checking, concatenating) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._work_pool, functools.partial(fn, *args, **kwargs))

    async def _accept_results(self, items: list[ResultItem]) -> list[tuple[str, bool] | Rejected]:
        outcomes = await self.db(self.state.accept_results, items, now_ms())
        if any(i.check is not None or i.verdict is not None for i in items):
            self.hub.work_available()  # a check (or tiebreak) was opened for its drawn checker
            self.verification.dispute_raised()
        return outcomes

    def _after_ruling(self, job_id: str, complete: bool) -> None:
        self.hub.work_available()  # a caught result is pending again, or a tiebreak opened
        self.hub.notify(job_id)
        if complete:
            self.schedule_aggregation(job_id)

    def remember(self, leases: list[Lease], node: str) -> None:
        book = self.lease_book
        for x in leases:
            book[x.task_id] = TaskRecord(
                task_id=x.task_id,
                job_id=x.job_id,
                index=x.index,
                state="leased",
                kind=x.kind,
                attempt=x.attempt,
                node=node,
                deadline_ms=x.deadline_ms,
                input=x.input,
                rows=x.rows,
            )
        while len(book) > LEASE_BOOK_SIZE:
            del book[next(iter(book))]

    async def task_record(self, task_id: str) -> TaskRecord:
        record = self.lease_book.get(task_id)
        return record if record is not None else await self.db(self.state.get_task, task_id)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Start background loops and finish what a previous run left half done."""
        self.spawn(self._reap_loop())
        self.spawn(self.verification.run_referee(self._after_ruling))
        if self.outbox is not None:
            self.spawn(self.outbox.run(self._stopping))
            self.spawn(self._settle_loop())
        for job_id in await self.db_bulk(self.state.jobs_to_aggregate):
            log.info("resuming aggregation of job %s", job_id)
            self.schedule_aggregation(job_id)
        self.on_results_accepted(())  # resume training jobs and watch round deadlines

    async def _settle_loop(self) -> None:
        """Each epoch: queue results of finished jobs, then post everyone's earnings as one root."""
        while True:
            await asyncio.sleep(self.config.epoch_interval_ms / 1000)
            try:
                finished = await self.db_bulk(self.ledger.finish_succeeded_jobs, now_ms())
                epoch = await self.db_bulk(self.ledger.post_epoch, now_ms())
            except Exception:  # a DB hiccup must not end the loop
                log.exception("settlement step failed")
                continue
            if finished or epoch:
                log.info("settlement: epoch %s queued, %d job results queued for the chain", epoch, finished)

    async def stop(self) -> None:
        self._stopping.set()
        for name, committer in (("lease", self.leases), ("result", self.results)):
            if committer.batches:
                log.info(
                    "%s group commits: %d requests in %d transactions", name, committer.requests, committer.batches
                )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.outbox is not None:
            self.outbox.close()
        self._db_pool.shutdown(wait=True)
        self._work_pool.shutdown(wait=True)
        self.state.close()

    async def _reap_loop(self) -> None:
        interval = self.config.reap_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                reissued = await self.db_bulk(self.state.reap_expired, now_ms())
            except Exception:  # a DB hiccup must not end the loop
                log.exception("reaping expired leases failed")
                continue
            if reissued:
                log.info("reissued %d expired leases", reissued)
                self.hub.notify_all()
                self.hub.work_available()
            try:
                if await self.db_bulk(self.state.reassign_checks, now_ms()):
                    self.hub.work_available()
                complete = await self.db_bulk(self.state.expire_checks, now_ms(), self.config.check_wait_ms)
            except Exception:
                log.exception("reassigning or expiring checks failed")
                continue
            for job_id in complete:
                self.schedule_aggregation(job_id)

    def schedule_aggregation(self, job_id: str) -> None:
        if job_id not in self._aggregating:
            self._aggregating.add(job_id)
            self.spawn(self._aggregate(job_id))

    async def _aggregate(self, job_id: str) -> None:
        try:
            job = await self.db(self.state.get_job, job_id)
            if job.kind == "training":
                # The open round has all its results: the round manager closes it. A training
                # job's result (its final weights) is written when its last round closes.
                self.on_results_accepted([job_id])
                return
            outputs = await self.db_bulk(self.state.task_outputs, job_id)
            try:
                result = await self.work(assemble, job.kind, outputs, self.blobs)
                await self.db(self.state.finish_job, job_id, result, "", now_ms())
                log.info("job %s succeeded: result %s (%d bytes)", job_id, result.sha256, result.size)
            except TensorGridError as e:
                log.warning("job %s failed to assemble: %s", job_id, e)
                await self.db(self.state.finish_job, job_id, None, f"could not assemble the result: {e}", now_ms())
        except Conflict:
            pass  # another replica finished it
        except Exception:
            log.exception("aggregating job %s failed; will retry on restart", job_id)
        finally:
            self._aggregating.discard(job_id)
            self.hub.notify(job_id)

    def on_results_accepted(self, job_ids: Iterable[str]) -> None:
        """The api accepted results of these jobs: a training round may close now.

        Call it after every accepted result (cheap, never blocks), and once with no job ids
        when the coordinator starts, so training jobs resume and round deadlines are watched.
        The first call starts the round manager's loop.
        """
        self.rounds.poke(job_ids)
