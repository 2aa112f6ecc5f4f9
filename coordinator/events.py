"""Wakes job watchers and long-polling nodes in this process when there is news for them.

The database is the source of truth; this only saves watchers from polling. With several
replicas a watcher may miss a wake-up from another replica, so watchers also poll slowly.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class EventHub:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._generation = 0  # how many times work was announced
        # Long polls waiting for work, the longest-waiting first (a dict keeps insertion order
        # and forgets a waiter that timed out in O(1)).
        self._work_waiters: dict[asyncio.Future[bool], None] = {}
        self._relay = 0  # waiters the last announcement left asleep that a relay may still wake

    def work_available(self, tasks: int | None = None) -> None:
        """Tasks became pending (a new job, round, reissue or release): wake long-polling nodes.

        tasks: how many tasks any node may take (a job's tasks, reissued leases): only that many
        waiters are woken, the longest-waiting first, not every idle node of the fleet for one
        task (5,000 of them asked the database at once for each new job). None: work for nodes
        the caller cannot count or name (a check for its drawn checker): every waiter is woken.
        A woken waiter that may not take the work passes the wake-up on (relay)."""
        self._generation += 1
        waiters = self._work_waiters
        n = len(waiters) if tasks is None else min(max(0, tasks), len(waiters))
        self._wake(n)
        self._relay = len(waiters)

    def relay(self, n: int = 2) -> int:
        """A woken waiter found no task it may take while tasks still wait (they need CUDA, more
        memory or more stake than it has): wake the next n oldest waiters in its place, so the
        work does not sleep until some long poll times out. Each relay wakes more than one, so a
        fleet of thousands that may not take a task is gone through in a few steps; the waiters
        the announcement left asleep bound it (each is woken at most once per announcement).
        Returns how many were woken."""
        n = min(n, self._relay, len(self._work_waiters))
        self._relay -= n
        self._wake(n)
        return n

    @property
    def relay_left(self) -> int:
        """How many waiters a relay may still wake for the last announcement."""
        return min(self._relay, len(self._work_waiters))

    def _wake(self, n: int) -> None:
        waiters = self._work_waiters
        for _ in range(n):
            fut = next(iter(waiters))
            del waiters[fut]
            if not fut.done():
                fut.set_result(True)

    def work_signal(self) -> int:
        """A mark of the work announced so far. Take it before looking for work and pass it to
        wait_for_work after finding none: work announced in between (a check opened while the
        lease query ran) then ends the wait at once instead of leaving it asleep for its timeout."""
        return self._generation

    @property
    def work_waiters(self) -> int:
        """Long polls waiting for work now."""
        return len(self._work_waiters)

    async def wait_for_work(self, timeout_s: float, signal: int | None = None) -> bool:
        """Return when work_available() or relay() wakes this waiter, at once if work was
        announced since `signal` was taken (True), or after timeout_s (False)."""
        if signal is not None and signal != self._generation:
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._work_waiters[fut] = None
        # One timer handle, not asyncio.wait_for's task and cancellation: thousands of nodes wait here.
        timer = loop.call_later(timeout_s, _time_out, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            self._work_waiters.pop(fut, None)

    def notify(self, job_id: str) -> None:
        for ev in self._waiters.get(job_id, ()):
            ev.set()

    def notify_all(self) -> None:
        for waiters in self._waiters.values():
            for ev in waiters:
                ev.set()

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set on every notify for job_id; subscribe before reading, so nothing slips by."""
        ev = asyncio.Event()
        self._waiters[job_id].add(ev)
        try:
            yield ev
        finally:
            self._waiters[job_id].discard(ev)
            if not self._waiters[job_id]:
                del self._waiters[job_id]


def _time_out(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)
