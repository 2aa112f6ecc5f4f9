"""The referee's re-runs of checked requests, gathered: one call to its sandboxed child for
several requests instead of one each (docs/SERVING.md, "What checks cost").

Each call to the referee's child costs more than a small model's forward pass (request files
written, lent and read back, a JSON exchange, the child woken on a core the calls in flight
need), and at 1 client those calls were the largest share of the slowest 1% of requests. So
a check that needs the referee's answer to an inference request waits here: the first one
opens a batch for its program (model and argument order); the batch is run when WINDOW_S
has passed since it opened or when it holds MOST requests, whichever comes first, so a check
waits at most WINDOW_S longer than before and a caught node is still caught within a second.

What a batch may not change:
- each request's answer. The child runs each request alone, all its rows in one forward pass,
  as a lone re-run does (rerun.run_requests): an endpoint's program is not probed for row
  independence when it is created, so rows joined across requests could honestly differ
  from a request's own. One request's answer never depends on another's input, and one that
  fails in the graph fails alone (that check decides nothing, as before).
- what nodes see. Batches form on the coordinator, from requests already answered; no node
  is told anything, so none learns which requests are checked or which went together.
- a verdict when the batch's call fails. A limit or a crash of the child fails the call for
  all of its requests; each is then run again alone, one call each, as before batching:
  a request that made the child fail decides nothing, the others are decided as before.
Generation requests are re-run one at a time (their decoding loop is the cost, not the call).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from coordinator.services.runtime import Runtime
from coordinator.services.serving import rerun as referee
from coordinator.services.serving.hooks import ServedRequest
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import TensorGridError
from tensorgrid.spec import EndpointSpec

log = logging.getLogger("tensorgrid.coordinator.serving")
WINDOW_S = 0.3  # a batch runs this long after its first request at the latest
MOST = 16  # or as soon as it holds this many

Key = tuple[str, tuple[str, ...]]  # (model digest, argument order): what one child call runs


class RefereeFailed(TensorGridError):
    """The referee could not answer this request (its graph failed on it, or the child did)."""


@dataclass
class _Batch:
    spec: EndpointSpec
    requests: list[ServedRequest] = field(default_factory=list)
    waiters: list[asyncio.Future[referee.Tensors]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class RefereeBatches:
    """The referee's answers to checked requests, several per call to its child."""

    def __init__(self, rt: Runtime, blobs: BlobStore, *, window_s: float = WINDOW_S, most: int = MOST) -> None:
        self.rt = rt
        self.blobs = blobs
        self.window_s = window_s
        self.most = most
        self._open: dict[Key, _Batch] = {}
        self.calls = 0  # calls made of the referee's child (batches, and requests run alone)

    async def answer(self, spec: EndpointSpec, request: ServedRequest) -> referee.Tensors:
        """The referee's answer to `request` (rerun.run_request's); raises when it has none."""
        if spec.serves != "inference":
            return await self._alone(spec, request)
        key = (spec.model.sha256, tuple(spec.input_names))
        loop = asyncio.get_running_loop()
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch(spec)
            batch.timer = loop.call_later(self.window_s, self._close, key, batch)
        waiter: asyncio.Future[referee.Tensors] = loop.create_future()
        batch.requests.append(request)
        batch.waiters.append(waiter)
        if len(batch.requests) >= self.most:
            self._close(key, batch)
        return await waiter

    def _close(self, key: Key, batch: _Batch) -> None:
        """No more requests join `batch`: run it."""
        if self._open.get(key) is batch:
            del self._open[key]
        if batch.timer is not None:
            batch.timer.cancel()
        self.rt.spawn(self._run(batch))

    async def _run(self, batch: _Batch) -> None:
        if len(batch.requests) == 1:
            await self._settle(batch.waiters[0], self._alone(batch.spec, batch.requests[0]))
            return
        try:
            self.calls += 1
            answers = await self.rt.refereed(referee.run_requests, self.rt, self.blobs, batch.spec, batch.requests)
        except Exception as e:  # noqa: BLE001 - a limit or a crash: each request alone, as before batching
            log.warning("the referee's run of %d checked requests failed (%s); running each alone",
                        len(batch.requests), e)  # fmt: skip
            for request, waiter in zip(batch.requests, batch.waiters, strict=True):
                await self._settle(waiter, self._alone(batch.spec, request))
            return
        for waiter, answer in zip(batch.waiters, answers, strict=True):
            if waiter.done():
                continue
            if isinstance(answer, str):
                waiter.set_exception(RefereeFailed(answer))
            else:
                waiter.set_result(answer)

    async def _alone(self, spec: EndpointSpec, request: ServedRequest) -> referee.Tensors:
        self.calls += 1
        return await self.rt.refereed(referee.run_request, self.rt, self.blobs, spec, request)

    @staticmethod
    async def _settle(waiter: asyncio.Future[referee.Tensors], answer: Coroutine[Any, Any, referee.Tensors]) -> None:
        """Hand `waiter` the outcome of `answer`, whatever it is."""
        try:
            result = await answer
        except Exception as e:  # noqa: BLE001 - the check that waits decides what a failure means
            if not waiter.done():
                waiter.set_exception(e)
            return
        if not waiter.done():
            waiter.set_result(result)
