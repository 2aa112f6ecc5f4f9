"""The small runtime every service gets: where database calls and blob work run, the clock,
the event hub, and a place to keep background tasks. Not the coordinator: services see only this."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError

from coordinator.events import EventHub
from tensorgrid.sandbox import SandboxFailure, SandboxLimits, WarmSandbox
from tensorgrid.sandbox.oneshot import CRASHED
from tensorgrid.serving import trace

# The referee's CPU priority below the coordinator's: its re-runs (sampled serving checks,
# disputes, replays) wait a little when the CPU is short, live serving calls do not.
REFEREE_NICE = 10
# How long the referee's start (interpreter and torch's import, at the coordinator's priority:
# it lowers its own only afterwards) may take. It starts with the first request that needs it,
# often while the grid is busy: the time a start at coordinator start and its retry at the
# first request used to have between them.
REFEREE_START_S = 240.0
# A stranger's graph the coordinator runs (referee, training replay) gets this much by default.
REFEREE_LIMITS = SandboxLimits(memory_bytes=4 << 30, time_s=600.0, nice=REFEREE_NICE, start_timeout_s=REFEREE_START_S)

T = TypeVar("T")
log = logging.getLogger("tensorgrid.coordinator")
# PostgreSQL ends one of two transactions that lock rows in opposite orders (deadlock_detected)
# or that conflict under serializable isolation (serialization_failure); the loser is rolled
# back whole, so running it again is safe: every repository method is one transaction.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
DB_ATTEMPTS = 4


def retryable(e: BaseException) -> bool:
    """A database error whose transaction was rolled back and may simply be run again: wrapped
    by SQLAlchemy (DBAPIError), or the driver's own (coordinator.db.rawsql runs hot statements
    on the driver's cursor, whose errors SQLAlchemy never sees)."""
    driver_error = e.orig if isinstance(e, DBAPIError) else e
    return getattr(driver_error, "sqlstate", None) in RETRYABLE_SQLSTATES


def _spanned(hop: str, call: Callable[[], T]) -> Callable[[], T]:
    """call, stamped as a span when serving's trace is on (tensorgrid.serving.trace)."""
    if not trace.enabled():
        return call

    def spanned() -> T:
        started = time.perf_counter_ns()
        try:
            return call()
        finally:
            trace.span(hop, "", started)

    return spanned


def with_retries(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs), run again (after a short random pause) when the database rolled it
    back for a deadlock or a serialization conflict."""
    for attempt in range(1, DB_ATTEMPTS + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if attempt == DB_ATTEMPTS or not retryable(e):
                raise
            log.info("database transaction %s rolled back (%s); retrying", getattr(fn, "__name__", fn), e)
            time.sleep(0.01 * attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def now_ms() -> int:
    return int(time.time() * 1000)


class Runtime:
    """Executors, clock, hub and background tasks of one coordinator process."""

    def __init__(
        self,
        *,
        inline_db: bool,
        db_threads: int,
        work_threads: int = 2,
        hub: EventHub | None = None,
        sandbox: SandboxLimits = REFEREE_LIMITS,
    ) -> None:
        """sandbox: the limits of every child that runs a stranger's graph for this coordinator."""
        # SQLite has one writer: one DB thread avoids lock contention. PostgreSQL takes a pool.
        self._db_pool = ThreadPoolExecutor(db_threads, thread_name_prefix="db")
        self._work_pool = ThreadPoolExecutor(work_threads, thread_name_prefix="work")
        # Work that asks the referee waits for it on a thread of its own, in turn (see refereed).
        self._referee_pool = ThreadPoolExecutor(1, thread_name_prefix="referee")
        self.inline_db = inline_db
        self.sandbox = sandbox
        self.referee: WarmSandbox | None = None  # the warm child services.sandboxed runs graphs in
        self._others: set[WarmSandbox] = set()  # children of one request each (other_child)
        self._referee_lock = threading.Lock()
        self._stopped = False
        self.hub = hub if hub is not None else EventHub()
        self._tasks: set[asyncio.Task[Any]] = set()

    @staticmethod
    def now_ms() -> int:
        return now_ms()

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a short repository method. On SQLite it runs inline: a local transaction takes well
        under a millisecond, and handing it to a thread costs more than that (measured: inline
        doubles task dispatch). On PostgreSQL it runs on the DB thread pool, off the loop."""
        if self.inline_db:
            return _spanned("c.db", functools.partial(fn, *args, **kwargs))()
        return await self.db_bulk(fn, *args, **kwargs)

    async def db_bulk(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a repository method that may take long (big inserts, scans) on the DB thread(s)."""
        call = functools.partial(with_retries, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, _spanned("c.db", call))

    async def work(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blob-heavy work (splitting, checking, concatenating) off the event loop."""
        call = _spanned("c.work", functools.partial(fn, *args, **kwargs))
        return await asyncio.get_running_loop().run_in_executor(self._work_pool, call)

    async def refereed(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run work that asks the referee (a re-run, replay, review, probe or evaluation in its
        sandboxed child) on the referee's own thread, one after another in the order asked. The
        referee answers one request at a time, for up to --referee-time-s each, and its start
        imports torch: on the work threads, two such calls waiting for it held every thread, and
        results' checks (check_output) queued behind them for minutes, past the nodes' deadlines."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._referee_pool, _spanned("c.ref", call))

    def referee_child(self, make: Callable[[], WarmSandbox]) -> WarmSandbox:
        """The referee, made by `make` when first asked for (services.sandboxed.referee); its
        child starts with the first request made of it, not with the coordinator: a grid that
        never runs a stranger's graph never starts one (an interpreter and torch's import).
        SandboxFailure once the runtime stopped: nothing starts a child that stop() would miss."""
        with self._referee_lock:
            if self._stopped:
                raise SandboxFailure(CRASHED, "the coordinator is stopping: its referee is closed")
            if self.referee is None:
                self.referee = make()
            return self.referee

    @contextlib.contextmanager
    def other_child(self, box: WarmSandbox) -> Iterator[WarmSandbox]:
        """A sandboxed child besides the referee (a memory review's fresh one: services.measured
        .measure_rows), closed by stop() as the referee is, so a stop never waits for its request;
        SandboxFailure once the runtime stopped."""
        with self._referee_lock:
            if self._stopped:
                raise SandboxFailure(CRASHED, "the coordinator is stopping: it starts no child")
            self._others.add(box)
        try:
            yield box
        finally:
            with self._referee_lock:
                self._others.discard(box)

    @property
    def stopping(self) -> bool:
        """stop() was called: a referee request failing now was cut short, not judged."""
        return self._stopped

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background task until it ends or the runtime stops."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        with self._referee_lock:
            self._stopped = True
            referee, others = self.referee, list(self._others)
        for child in [referee, *others]:
            if child is not None:
                child.close()  # a graph still running there is abandoned, not waited for (nor one starting)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def shutdown(self) -> None:
        """Wait for the pools' running calls to end."""
        self._db_pool.shutdown(wait=True)
        self._work_pool.shutdown(wait=True)
        self._referee_pool.shutdown(wait=True)
