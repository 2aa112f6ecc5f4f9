"""Group commit: requests that arrive in the same moment share one database transaction.

Under load many nodes lease and report at once. Serving all queued requests in one
transaction costs a fraction of a transaction each, and every caller's await returns
only after its own change committed: nobody is told "accepted" or "leased" for a change
a crash could lose.
"""

from __future__ import annotations

import asyncio
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
        orphaned: Callable[[I, O], None] | None = None,
        drain: bool = True,
    ) -> None:
        """delay_s: how long a flush waits for more requests to join it (more: fewer, bigger
        transactions, each caller answered that much later). While some joined during the last
        wait, it waits delay_s again, up to gather_max_s in all (counted in waits, not on the
        clock: on a busy loop a wait runs long, and that is when batches should grow).
        orphaned(request, outcome): told of a change that committed after its caller had gone
        (cancelled: a node's long poll ended), so what was granted to nobody can be undone.
        drain: requests that arrive while a batch runs go in the next batch as soon as it ends
        (a busy coordinator's callers wait for nothing more); False: they wait delay_s in the next
        flush, as every request does (heartbeats: nobody waits on their answer, and a steady
        stream of them drained at once made a transaction every few milliseconds, not every delay_s)."""
        self._run = run
        self._orphaned = orphaned
        self._drain = drain
        self._delay_s = delay_s
        self._extra_waits = max(0, round(gather_max_s / delay_s) - 1) if delay_s > 0 else 0
        self._queue: list[tuple[I, asyncio.Future[O]]] = []
        self._scheduled = False
        self.batches = 0
        self.requests = 0

    async def submit(self, request: I) -> O:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[O] = loop.create_future()
        self._queue.append((request, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        return await fut

    async def _flush(self) -> None:
        # Give requests already on their way (ready callbacks of other RPCs) a moment to join,
        # and more while they keep coming (a busy coordinator: bigger batches cost less each).
        await asyncio.sleep(self._delay_s)
        seen, waits = 1, self._extra_waits
        while waits and seen < len(self._queue) < MAX_BATCH:
            seen, waits = len(self._queue), waits - 1
            await asyncio.sleep(self._delay_s)
        self._scheduled = False
        queue = self._queue  # draining: the queue itself, so what arrives meanwhile is run too
        if not self._drain:  # else what arrives from now on waits for the next flush
            self._queue = []
        while queue:
            batch = queue[:MAX_BATCH]
            del queue[:MAX_BATCH]
            try:
                outcomes = await self._run([request for request, _ in batch])
            except Exception as e:  # the transaction failed as a whole: every caller learns why
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.requests += len(batch)
            for (request, fut), outcome in zip(batch, outcomes, strict=True):
                if fut.done():
                    if self._orphaned is not None and not isinstance(outcome, TensorGridError):
                        self._orphaned(request, outcome)
                    continue
                if isinstance(outcome, TensorGridError):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)
