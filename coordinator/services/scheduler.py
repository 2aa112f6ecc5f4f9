"""Scheduling: leasing tasks to nodes (group-committed), heartbeats, failures, and reaping
expired leases and stale checks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import Connection

from coordinator.commits import GroupCommitter
from coordinator.config import LeaseTiming
from coordinator.errors import Rejected
from coordinator.repositories.heartbeats import BeatAnswer, Heartbeat
from coordinator.repositories.leasing import Barred
from coordinator.repositories.store import Store
from coordinator.repositories.tasks import REAP_BATCH, TaskRecord
from coordinator.services.pacing import HeartbeatPacing
from coordinator.services.runtime import Runtime
from tensorgrid.rpc import MAX_LEASE_WAIT_MS
from tensorgrid.types import Lease, TaskError

log = logging.getLogger("tensorgrid.coordinator")
LEASE_BOOK_SIZE = 200_000
HEARTBEAT_GATHER_S = 0.05
IDLE_RETRY_MS = 500  # what leasing answers when there is simply no work
IDLE_MEMO_S = 1.0  # how long "no task is pending anywhere" is believed without a wake-up
# While tasks wait that a long-polling node may not take, it looks again this often (see lease)
BUSY_RELOOK_S = 5.0
LeaseOutcome = tuple[list[Lease], int] | Rejected  # (leases, retry_after_ms), or why the node may not lease


class Scheduler:
    """Leases, heartbeats and failures; `on_complete(job_id)` hears of jobs a reaped check completed."""

    def __init__(
        self,
        rt: Runtime,
        store: Store,
        timing: LeaseTiming,
        *,
        barred: Barred | None = None,
        before_lease: Callable[[str], Awaitable[None]] | None = None,
        check_wait_ms: int = 30_000,
        pacing: HeartbeatPacing | None = None,
        on_granted: Callable[[list[Lease], str], None] | None = None,
    ) -> None:
        """on_granted(leases, node): told of leases granted, after their commit (the referee
        re-runs the rows it will rule on meanwhile: Verification.leased); it must not block."""
        self.rt = rt
        self._on_granted = on_granted
        # How often nodes should heartbeat (the interval is told with each heartbeat's answer)
        self.pacing = pacing if pacing is not None else HeartbeatPacing(5_000, 0, 5_000)
        self.store = store
        self.timing = timing
        self.check_wait_ms = check_wait_ms
        self._before_lease = before_lease
        # Leases this process granted, so a result can be pre-checked without a DB read;
        # the authoritative checks run again inside the accepting transaction.
        self.lease_book: dict[str, TaskRecord] = {}
        self._barred = barred
        # (the work signal then in effect, when): no task of any job was pending (see _lease_once)
        self._idle: tuple[int, float] | None = None
        self._idle_check: asyncio.Future[None] | None = None
        self._idle_watch: asyncio.Future[None] | None = None
        self._releases: set[asyncio.Future[None]] = set()  # undelivered leases being released (kept referenced)
        self.leases: GroupCommitter[tuple[str, int], tuple[list[Lease], int]] = GroupCommitter(
            lambda requests: rt.db(store.tasks.lease_many, requests, rt.now_ms(), timing, barred),
            orphaned=self._undelivered,
        )
        # Heartbeats come every few seconds and nobody waits on their answer: a batch gathers
        # for HEARTBEAT_GATHER_S, so thousands of nodes cost tens of transactions a second, not thousands.
        # For the same reason they run on the database thread (db_bulk), never inline on the event
        # loop (SQLite's Runtime.db): a serving call there would wait the transaction out (~1 ms).
        self.heartbeats: GroupCommitter[Heartbeat, BeatAnswer] = GroupCommitter(
            lambda beats: rt.db_bulk(store.tasks.heartbeat_many, beats, rt.now_ms(), timing),
            delay_s=HEARTBEAT_GATHER_S,
            drain=False,  # steady heartbeats (tensorgrid.heartbeats) still make one batch per 50 ms
        )

    async def lease(self, node: str, max_tasks: int, wait_ms: int) -> tuple[list[Lease], int]:
        """Up to max_tasks leases for the node; waits up to wait_ms (long poll) when there is no work."""
        await self.before_lease(node)
        deadline = time.monotonic() + min(wait_ms, MAX_LEASE_WAIT_MS) / 1000
        hub = self.rt.hub
        signal = hub.work_signal()  # before looking: a wake-up during the query is not lost
        leases, retry = await self._lease_once(node, max_tasks or 1, signal)
        while not leases and wait_ms and retry <= IDLE_RETRY_MS:  # idle, not backing off: long poll
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # Until work is announced here, or the idle watcher finds another replica's, or the
            # wait ends (then one more look, as always). The whole wait only while the queue is
            # known empty: a task may otherwise become this node's with no announcement (its
            # stake grew, its failed task's --avoid-failed-node-ms ran out, another replica
            # queued work the watcher, idle only on an empty queue, never counts), so it looks
            # again every BUSY_RELOOK_S, as every long poll did when the wait was 5 s.
            if not await self._known_idle(signal):
                left = min(left, BUSY_RELOOK_S)
            woken = await hub.wait_for_work(left, signal)
            await self.before_lease(node)  # its stake as every call reads it (cached a minute)
            signal = hub.work_signal()
            leases, retry = await self._lease_once(node, max_tasks or 1, signal)
            if woken and not leases and retry == IDLE_RETRY_MS:
                await self._relay()
        self.granted(leases, node)
        return leases, retry

    async def _lease_once(self, node: str, max_tasks: int, signal: int) -> tuple[list[Lease], int]:
        """One lease query, skipped while the whole queue is known to be empty.

        Idle nodes long-poll: at 5,000 of them that was 2,000 lease queries a second finding
        nothing, most of an idle coordinator's work (benchmarks.fleet). When a query finds
        nothing for its node, one shared query asks whether any task waits for anyone; if none
        does, every lease query of this process is answered "no work" without the database
        until this process hears of new work (signal) or IDLE_MEMO_S passes. While long polls
        wait on that answer, one watcher (_watch_idle) looks again every IDLE_MEMO_S / 2: it
        keeps the memo fresh and wakes as many waiters as there are tasks when it finds work
        another replica queued (replicas have no wake-ups between them). Each waiter looking
        again on its own every IDLE_MEMO_S cost 5,000 wake-ups a second, and a burst of
        database queries each time the memo lapsed, at 5,000 idle nodes."""
        if self._memo_holds(signal):
            return [], IDLE_RETRY_MS
        leases, retry = await self.leases.submit((node, max_tasks))
        if not leases and retry == IDLE_RETRY_MS and self._idle_check is None:
            self._idle_check = asyncio.ensure_future(self._check_idle(signal))
        return leases, retry

    def _memo_holds(self, signal: int) -> bool:
        """Whether no task is pending anywhere, as far as this process knows since `signal`."""
        idle = self._idle
        return idle is not None and idle[0] == signal and time.monotonic() - idle[1] < IDLE_MEMO_S

    async def _known_idle(self, signal: int) -> bool:
        """_memo_holds, once the shared look at the queue under way (if any) has answered."""
        check = self._idle_check
        if check is not None:
            await asyncio.shield(check)
        return self._memo_holds(signal)

    async def _relay(self) -> None:
        """This long poll was woken for work it may not take (a CUDA task woke a CPU node, a
        priced job an unstaked one): if tasks still wait, wake other waiters in its place."""
        hub = self.rt.hub
        if not hub.relay_left:
            return
        try:
            pending = await self.rt.db(self.store.tasks.count_pending, 1)
        except Exception:  # the waiters still look again when their wait ends
            log.exception("counting pending tasks failed")
            return
        if pending:
            hub.relay()

    async def _check_idle(self, signal: int) -> None:
        try:
            if not await self.rt.db(self.store.tasks.any_pending):
                self._idle = (signal, time.monotonic())
                if self._idle_watch is None:
                    self._idle_watch = asyncio.ensure_future(self._watch_idle())
        except Exception:  # only an optimisation: the next lease query simply asks the database
            log.exception("checking for pending tasks failed")
        finally:
            self._idle_check = None

    async def _watch_idle(self) -> None:
        """While the idle memo holds and long polls wait: every IDLE_MEMO_S / 2, count the tasks
        waiting for anyone (up to the number of waiters); none: the memo is renewed; some (queued
        by another replica): that many waiters are woken and the memo ends. Work announced in
        this process, or no waiter left, ends the watch (the memo then lapses by itself)."""
        hub = self.rt.hub
        try:
            while True:
                await asyncio.sleep(IDLE_MEMO_S / 2)
                signal, idle = hub.work_signal(), self._idle
                if idle is None or idle[0] != signal or not hub.work_waiters:
                    return
                pending = await self.rt.db(self.store.tasks.count_pending, hub.work_waiters)
                if hub.work_signal() != signal:
                    return
                if pending:
                    self._idle = None
                    hub.work_available(pending)
                    return
                self._idle = (signal, time.monotonic())
        except Exception:  # the waiters still look again when their wait ends
            log.exception("watching for pending tasks failed")
        finally:
            self._idle_watch = None

    def _undelivered(self, request: tuple[str, int], outcome: tuple[list[Lease], int]) -> None:
        """Leases that committed after their long poll had ended (the node gave up waiting, its
        connection dropped): nobody will run them, so they are released now."""
        leases = outcome[0]
        if leases:
            release = asyncio.ensure_future(self._release(request[0], leases))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)

    async def _release(self, node: str, leases: list[Lease]) -> None:
        try:
            held = [(x.task_id, x.attempt) for x in leases]
            released = await self.rt.db_bulk(self.store.tasks.release_undelivered, node, held, self.rt.now_ms())
        except Exception:  # they expire and are reissued as before
            log.exception("releasing %d undelivered leases of %s failed", len(leases), node)
            return
        if released:
            log.info("released %d leases whose long poll had ended (%s)", released, node)
            self.rt.hub.work_available(released)

    async def before_lease(self, node: str) -> None:
        """What leasing needs first, outside any transaction (e.g. jobs may need more stake than registering did)."""
        if self._before_lease is not None:
            await self._before_lease(node)

    def lease_in(self, conn: Connection, requests: list[tuple[str, int]], now_ms: int) -> list[LeaseOutcome]:
        """Lease inside the caller's transaction (results that ask for their node's next tasks):
        exactly LeaseTasks' checks, without its wait. Call before_lease first and granted after commit."""
        return self.store.tasks.lease_in(conn, requests, now_ms, self.timing, self._barred)

    def granted(self, leases: list[Lease], node: str) -> None:
        """Leases the node was granted and told of (after their transaction committed)."""
        self.remember(leases, node)
        if leases and self._on_granted is not None:
            self._on_granted(leases, node)
        for job_id in {lease.job_id for lease in leases}:
            self.rt.hub.notify(job_id)

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

    def forget(self, task_id: str) -> None:
        self.lease_book.pop(task_id, None)

    async def task_record(self, task_id: str, node: str = "") -> TaskRecord:
        """The task as this process leased it, else (or when `node` is given and not its holder
        here: a lease it lost may be one it still hands a result in for, tasks.lost_lease) as read."""
        record = self.lease_book.get(task_id)
        if record is not None and (not node or record.node == node):
            return record
        return await self.rt.db(self.store.tasks.get_task, task_id)

    async def heartbeat(
        self, node: str, active: list[tuple[str, int]], draining: bool, session: str = ""
    ) -> list[tuple[str, int]]:
        """Keep the node's live leases alive; returns those it no longer holds. session: the hash
        of the token it came with: leases its previous run left behind are reissued
        (repositories.heartbeats)."""
        revoked, reissued = await self.heartbeats.submit((node, active, draining, session))  # group-committed
        if reissued:
            log.info("node %s restarted: reissued %d lease(s) its previous run held", node, len(reissued))
            for job_id in set(reissued):
                self.rt.hub.notify(job_id)
            self.rt.hub.work_available(len(reissued))
        return revoked

    async def fail(self, node: str, task_id: str, attempt: int, error: TaskError) -> tuple[TaskRecord, bool]:
        """A node could not finish a task: reissue it (True) or fail its job (False)."""
        task = await self.task_record(task_id)
        reissued = await self.rt.db(self.store.tasks.fail_task, node, task_id, attempt, error, self.rt.now_ms())
        self.forget(task_id)
        if reissued:
            self.rt.hub.work_available(1)
        self.rt.hub.notify(task.job_id)
        return task, reissued

    async def reap_expired(self) -> int:
        """Reissue every lease expired by now, REAP_BATCH per transaction; returns how many."""
        now, reissued = self.rt.now_ms(), 0
        while True:
            n = await self.rt.db_bulk(self.store.tasks.reap_expired, now)
            reissued += n
            if n < REAP_BATCH:
                return reissued

    async def reap_loop(self, interval_s: float, on_complete: Callable[[str], None]) -> None:
        """Reissue expired leases, redraw checkers of stale checks, hand unplaceable checks on."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                reissued = await self.reap_expired()
            except Exception:  # a DB hiccup must not end the loop
                log.exception("reaping expired leases failed")
                continue
            if reissued:
                log.info("reissued %d expired leases", reissued)
                self.rt.hub.notify_all()
                self.rt.hub.work_available(reissued)
            verification = self.store.verification
            try:
                if await self.rt.db_bulk(verification.reassign_checks, self.rt.now_ms(), self.check_wait_ms):
                    self.rt.hub.work_available()
                complete = await self.rt.db_bulk(verification.expire_checks, self.rt.now_ms(), self.check_wait_ms)
            except Exception:
                log.exception("reassigning or expiring checks failed")
                continue
            for job_id in complete:
                on_complete(job_id)
