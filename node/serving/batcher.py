"""Dynamic batching of one replica's requests into micro-batches for its one worker.

The policy (Policy.decide), applied whenever the worker is idle and requests are queued:

- one request queued: run it at once (a lone client never waits for company);
- max_batch or more queued: run max_batch at once;
- in between: run them all, unless more are arriving (one arrived within the last
  max_delay_us), in which case wait for more, at most max_delay_us from when the worker
  was free for them, and no longer than max_delay_us after the last arrival.

With one worker per replica no batch is running when the next is formed, so the requests
that queued behind a running batch form the next one, up to max_batch, without delay.

Requests past their deadline (the coordinator's clock, compared with ours less an allowance
for skew) and requests cancelled before they started are dropped, never run.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["Batcher", "Pending", "Policy"]

CLOCK_ALLOWANCE_MS = 50  # how far our clock may run ahead of the coordinator's before a deadline is missed


@dataclass
class Pending:
    """A request queued on a replica."""

    request_id: int
    payload: bytes
    deadline_ms: int = 0  # the coordinator's clock, unix ms; 0: none
    seed: int = 0
    arrived: float = field(default=0.0)  # monotonic seconds, set by the batcher


@dataclass(frozen=True)
class Policy:
    """When to run what (times in monotonic seconds)."""

    max_batch: int
    max_delay_us: int

    def decide(self, queued: int, now: float, last_arrival: float, free_since: float) -> tuple[int, float]:
        """(n, 0.0): run the first n queued now; or (0, t): decide again at t or on an arrival.

        free_since: when the worker became free for the requests now queued."""
        if queued <= 0:
            return 0, float("inf")
        delay = self.max_delay_us / 1e6
        if queued == 1 or queued >= self.max_batch or delay <= 0:
            return min(queued, self.max_batch), 0.0
        until = min(free_since + delay, last_arrival + delay)
        if now >= until:
            return queued, 0.0
        return 0, until


RunBatch = Callable[[list[Pending]], Awaitable[None]]
Drop = Callable[[Pending], None]


class Batcher:
    """Queues a replica's requests and hands micro-batches to run_batch, one at a time."""

    def __init__(
        self,
        policy: Policy,
        run_batch: RunBatch,
        expired: Drop,
        *,
        wall_ms: Callable[[], float] = lambda: time.time() * 1000,
        monotonic: Callable[[], float] = time.monotonic,
        allowance_ms: int = CLOCK_ALLOWANCE_MS,
    ) -> None:
        """expired(p) is told of each request dropped past its deadline (cancelled ones are not)."""
        self.policy = policy
        self._run_batch = run_batch
        self._expired = expired
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        self._allowance_ms = allowance_ms
        self._queue: OrderedDict[int, Pending] = OrderedDict()
        self._wake = asyncio.Event()
        self._last_arrival = float("-inf")
        self._closed = False
        self.running: list[Pending] = []  # the batch the worker is on

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, request: Pending) -> None:
        """Queue a request (ignored once closed)."""
        if self._closed:
            return
        request.arrived = self._last_arrival = self._monotonic()
        self._queue[request.request_id] = request
        self._wake.set()

    def cancel(self, request_id: int) -> bool:
        """Drop a request that has not started; False if it is not queued here."""
        return self._queue.pop(request_id, None) is not None

    def close(self) -> list[Pending]:
        """Stop batching; the requests still queued (never run), in order."""
        self._closed = True
        left = list(self._queue.values())
        self._queue.clear()
        self._wake.set()
        return left

    async def run(self) -> None:
        """Form and run micro-batches until closed."""
        while not self._closed:
            batch = await self.next_batch()
            if batch:
                self.running = batch
                try:
                    await self._run_batch(batch)
                finally:
                    self.running = []

    async def next_batch(self) -> list[Pending]:
        """The next micro-batch by the policy ([] once closed)."""
        free_since: float | None = None
        while not self._closed:
            self._drop_expired()
            now = self._monotonic()
            if not self._queue:
                free_since = None
                await self._sleep(None)
                continue
            if free_since is None:
                free_since = now
            take, until = self.policy.decide(len(self._queue), now, self._last_arrival, free_since)
            if take:
                return [self._queue.popitem(last=False)[1] for _ in range(take)]
            await self._sleep(until - now)
        return []

    async def _sleep(self, seconds: float | None) -> None:
        """Until an arrival (or close), at most seconds."""
        self._wake.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _drop_expired(self) -> None:
        now_ms = self._wall_ms() - self._allowance_ms
        late = [p for p in self._queue.values() if p.deadline_ms and p.deadline_ms < now_ms]
        for p in late:
            del self._queue[p.request_id]
            self._expired(p)
