"""Wakes job watchers in this process when their job's event log grows.

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
        self._work = asyncio.Event()

    def work_available(self) -> None:
        """Tasks became pending (a new job, round, reissue or release): wake long-polling nodes."""
        self._work.set()
        self._work = asyncio.Event()

    def work_signal(self) -> asyncio.Event:
        """What the next work_available() sets. Take it before looking for work and wait on it
        after finding none: work that appears in between (a check opened while the lease query
        ran) then wakes the waiter instead of leaving it asleep for its whole timeout."""
        return self._work

    async def wait_for_work(self, timeout_s: float, signal: asyncio.Event | None = None) -> None:
        """Return when work_available() is called (since `signal` was taken), or after timeout_s."""
        try:
            await asyncio.wait_for((signal or self._work).wait(), timeout_s)
        except TimeoutError:
            pass

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
