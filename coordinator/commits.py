"""Group commit: requests that arrive in the same moment share one database transaction.

Under load many nodes lease and report at once. Serving all queued requests in one
transaction costs a fraction of a transaction each, and every caller's await returns
only after its own change committed: nobody is told "accepted" or "leased" for a change
a crash could lose.

How long a flush waits for more requests to join it decides both what a transaction costs
per request and how long each caller waits. A committer that knows which calls are on their
way to it (`Arrivals`: calls whose RPC has started but whose request has not joined yet) waits
only while some are, up to GATHER_MAX_S, and commits at once when none is: a lone request is
not delayed, and under load, when calls keep starting, batches grow as before. A committer
without `Arrivals` waits FLUSH_DELAY_S, and more while requests keep joining.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from tensorgrid.errors import TensorGridError

I = TypeVar("I")  # noqa: E741 - request
O = TypeVar("O")  # noqa: E741 - outcome
MAX_BATCH = 256
FLUSH_DELAY_S = 0.0005
# While requests keep joining a flush, it waits FLUSH_DELAY_S more at a time, up to this much in
# all. Under `python -m benchmarks.dispatch` (8 nodes, a coordinator short of CPU) batches of
# results grew from about 2.7 to about 5 and its CPU per task fell by a sixth: a transaction's
# fixed part (BEGIN, COMMIT and the pages it writes, the statements per batch) is shared by more.
# Gathering only while the waits ran late (a loop short of CPU) was tried: on an idle machine it
# won back the latency (1,000 tasks/s against 850-920), but at load 12 it gathered no more than no
# gathering did, and neither CPU per task nor tasks/s improved on the code before.
GATHER_MAX_S = 0.002


class _Ticket:
    """One call on its way to a committer; `live` until it joins or its time runs out."""

    __slots__ = ("live", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.live = True


_ticket: contextvars.ContextVar[_Ticket | None] = contextvars.ContextVar("group_commit_ticket", default=None)


class Arrivals:
    """Calls known to be on their way to one committer: counted from the start of their RPC
    (`expect`, before its request message is read) until their request joins (`arrived`, in the
    same call's context). A call that never joins (refused before it, or answered without the
    database) stops counting after horizon_s, so a flush never waits for it longer than that."""

    def __init__(self, horizon_s: float = GATHER_MAX_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.horizon_s = horizon_s
        self._clock = clock
        self._tickets: deque[_Ticket] = deque()
        self._live = 0

    def expect(self) -> None:
        """A call bound for this committer has started (call in that call's context)."""
        ticket = _Ticket(self._clock())
        self._tickets.append(ticket)
        self._live += 1
        _ticket.set(ticket)

    def arrived(self) -> None:
        """The current call's request joins the queue (a call not expected, or counted already: nothing)."""
        ticket = _ticket.get()
        if ticket is not None and ticket.live:
            ticket.live = False
            self._live -= 1

    def coming(self) -> int:
        """How many expected calls have not joined yet (those started over horizon_s ago not counted)."""
        cutoff = self._clock() - self.horizon_s
        tickets = self._tickets
        while tickets and (not tickets[0].live or tickets[0].started < cutoff):
            ticket = tickets.popleft()
            if ticket.live:
                ticket.live = False
                self._live -= 1
        return self._live


class GroupCommitter(Generic[I, O]):
    """Queue requests; a flush on the next loop turn runs all queued ones in one call.

    `run` gets the requests and returns one outcome per request, in order: a value, or a
    TensorGridError to raise to that caller alone.
    """

    def __init__(
        self,
        run: Callable[[list[I]], Awaitable[Sequence[O | TensorGridError]]],
        delay_s: float = FLUSH_DELAY_S,
        gather_max_s: float = GATHER_MAX_S,
        arrivals: Arrivals | None = None,
    ) -> None:
        """delay_s: how long a flush waits for more requests to join it (more: fewer, bigger
        transactions, each caller answered that much later). While some joined during the last
        wait, it waits delay_s again, up to gather_max_s in all (counted in waits, not on the
        clock: on a busy loop a wait runs long, and that is when batches should grow).

        arrivals: the calls on their way to this committer; with it a flush waits only while some
        are (each join ends a wait early, delay_s bounds one wait), up to gather_max_s on the clock,
        and runs at the next loop turn when none is."""
        self._run = run
        self._delay_s = delay_s
        self._gather_max_s = gather_max_s
        self._extra_waits = max(0, round(gather_max_s / delay_s) - 1) if delay_s > 0 else 0
        self.arrivals = arrivals
        self._queue: list[tuple[I, asyncio.Future[O]]] = []
        self._scheduled = False
        self._joined: asyncio.Future[None] | None = None  # a flush waiting for the next request
        self.batches = 0
        self.requests = 0

    async def submit(self, request: I) -> O:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[O] = loop.create_future()
        self._queue.append((request, fut))
        if self.arrivals is not None:
            self.arrivals.arrived()
        joined = self._joined
        if joined is not None and not joined.done():
            joined.set_result(None)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        return await fut

    async def _flush(self) -> None:
        if self.arrivals is not None:
            await self._gather_arriving()
        else:
            await self._gather_joining()
        self._scheduled = False
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                outcomes = await self._run([request for request, _ in batch])
            except Exception as e:  # the transaction failed as a whole: every caller learns why
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.requests += len(batch)
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if fut.done():
                    continue
                if isinstance(outcome, TensorGridError):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)

    async def _gather_joining(self) -> None:
        # Give requests already on their way (ready callbacks of other RPCs) a moment to join,
        # and more while they keep coming (a busy coordinator: bigger batches cost less each).
        await asyncio.sleep(self._delay_s)
        seen, waits = 1, self._extra_waits
        while waits and seen < len(self._queue) < MAX_BATCH:
            seen, waits = len(self._queue), waits - 1
            await asyncio.sleep(self._delay_s)

    async def _gather_arriving(self) -> None:
        # Wait only for calls known to be on their way; each join ends a wait early.
        assert self.arrivals is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._gather_max_s
        while len(self._queue) < MAX_BATCH and self.arrivals.coming():
            left = deadline - loop.time()
            if left <= 0:
                return
            joined = self._joined = loop.create_future()
            timer = loop.call_later(min(left, self._delay_s), _wake, joined)
            try:
                await joined
            finally:
                timer.cancel()
                self._joined = None


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
