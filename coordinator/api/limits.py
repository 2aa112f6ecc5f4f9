"""Bounds on what peers hold of the coordinator: concurrent calls and streams, request sizes.

One interceptor, placed after the session interceptor (so a node's calls are counted against
its address, everyone else's against their IP address), does two things for every method:

- refuses a call beyond the concurrent calls or streams a peer, or all peers together, may
  hold (`PeerLimits`) with RESOURCE_EXHAUSTED, what is over which limit, and a retry hint in
  the trailing metadata (`tensorgrid.rpc.RETRY_AFTER_METADATA_KEY`);
- refuses a request message bigger than its method takes (`tensorgrid.rpc.request_limit`)
  with RESOURCE_EXHAUSTED before parsing it: control messages are small, only blob chunks and
  small results are not.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from coordinator.api.auth import current_node
from coordinator.config import PeerLimits
from tensorgrid.rpc import GO_AHEAD_METADATA_KEY, RETRY_AFTER_METADATA_KEY, request_limit

log = logging.getLogger("tensorgrid.coordinator")
Observe = Callable[[str, str, float], None]  # (method, status code name, seconds)


@dataclass(frozen=True)
class Oversize:
    """What the size-checking deserializer returns instead of parsing a too-big message."""

    size: int
    limit: int


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string: 'ipv4:1.2.3.4:5' → '1.2.3.4', 'ipv6:[::1]:5' → '::1'."""
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")]
    if scheme == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer  # unix sockets and the like: the whole string


class PeerLimiter:
    """Counts calls and streams in flight per peer and in total; acquire says why it refuses."""

    def __init__(self, limits: PeerLimits) -> None:
        self.limits = limits
        self._calls: dict[str, int] = {}
        self._streams: dict[str, int] = {}
        self.calls = 0
        self.streams = 0

    def acquire(self, peer: str, is_node: bool, streaming: bool) -> str | None:
        """Count one more call of `peer`; None when admitted, else what limit it would break."""
        lim = self.limits
        calls_cap, streams_cap = (
            (lim.calls_per_node, lim.streams_per_node) if is_node else (lim.calls_per_ip, lim.streams_per_ip)
        )
        who = f"node {peer}" if is_node else f"address {peer}"
        calls, streams = self._calls.get(peer, 0), self._streams.get(peer, 0)
        if calls >= calls_cap:
            return f"{who} already has {calls} calls in flight (limit {calls_cap})"
        if streaming and streams >= streams_cap:
            return f"{who} already has {streams} streams open (limit {streams_cap})"
        if self.calls >= lim.calls_total:
            return f"the coordinator is serving {self.calls} calls (limit {lim.calls_total})"
        if streaming and self.streams >= lim.streams_total:
            return f"the coordinator has {self.streams} streams open (limit {lim.streams_total})"
        self._calls[peer] = calls + 1
        self.calls += 1
        if streaming:
            self._streams[peer] = streams + 1
            self.streams += 1
        return None

    def release(self, peer: str, streaming: bool) -> None:
        _decrement(self._calls, peer)
        self.calls -= 1
        if streaming:
            _decrement(self._streams, peer)
            self.streams -= 1

    def in_flight(self, peer: str) -> tuple[int, int]:
        """(calls, streams) the peer holds now."""
        return self._calls.get(peer, 0), self._streams.get(peer, 0)


def _decrement(counts: dict[str, int], peer: str) -> None:
    left = counts.get(peer, 0) - 1
    if left > 0:
        counts[peer] = left
    else:
        counts.pop(peer, None)  # idle peers take no memory


class LimitsInterceptor(grpc.aio.ServerInterceptor):
    """Admits each call under the peer limits and checks its request sizes (see the module doc)."""

    def __init__(self, limits: PeerLimits, observe: Observe | None = None) -> None:
        """observe(method, status code name, seconds) after each admitted call (the metrics)."""
        self.limiter = PeerLimiter(limits)
        self.observe = observe
        self.retry_after_ms = limits.retry_after_ms
        # method → (its registered handler, that handler wrapped): wrapped once, not per call
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:  # an unknown method: nothing to wrap, nothing cached
            return None
        method = details.method
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, _Bounded(self, method, handler).wrap())
        return known[1]

    async def admit(self, context: grpc.aio.ServicerContext, streaming: bool) -> str:
        """Count the call in, or abort it with RESOURCE_EXHAUSTED; returns the peer key to release."""
        node = current_node.get(None)
        peer = node if node is not None else peer_host(context.peer() or "")
        refusal = self.limiter.acquire(peer, node is not None, streaming)
        if refusal is not None:
            log.warning("refused a call: %s", refusal)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{refusal}: retry in {self.retry_after_ms} ms",
                trailing_metadata=((RETRY_AFTER_METADATA_KEY, str(self.retry_after_ms)),),
            )
        return peer

    def finish(self, peer: str, streaming: bool, method: str, context: Any, started: float) -> None:
        """Release an admitted call (in its `finally`) and report how it ended."""
        self.limiter.release(peer, streaming)
        if self.observe is not None:
            self.observe(method, _code_name(context, sys.exc_info()[1]), time.perf_counter() - started)


def _code_name(context: Any, exc: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if exc is None:
        return "OK"
    return "CANCELLED" if isinstance(exc, asyncio.CancelledError) else "UNKNOWN"


class _Bounded:
    """One method's handler, wrapped: sized deserializer, admission around each call."""

    def __init__(self, owner: LimitsInterceptor, method: str, handler: grpc.RpcMethodHandler) -> None:
        self.owner = owner
        self.method = method
        self.handler = handler
        self.limit = request_limit(method)

    def deserializer(self) -> Callable[[bytes], Any]:
        inner = self.handler.request_deserializer
        limit = self.limit

        def deserialize(raw: bytes) -> Any:
            if len(raw) > limit:
                return Oversize(len(raw), limit)
            return inner(raw) if inner is not None else raw

        return deserialize

    async def check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Oversize):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"a {self.method.rsplit('/', 1)[-1]} message may be at most {request.limit} bytes, "
                f"this one is {request.size}",
            )
        return request

    async def requests(self, iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for request in iterator:
            yield await self.check(request, context)

    def wrap(self) -> grpc.RpcMethodHandler:
        h, owner, method = self.handler, self.owner, self.method
        kw = dict(request_deserializer=self.deserializer(), response_serializer=h.response_serializer)
        if h.unary_unary:
            inner_uu = h.unary_unary

            async def uu(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                request = await self.check(request, context)
                peer = await owner.admit(context, False)
                try:
                    return await _result(inner_uu(request, context))
                finally:
                    owner.finish(peer, False, method, context, started)

            return grpc.unary_unary_rpc_method_handler(uu, **kw)
        if h.unary_stream:
            inner_us = h.unary_stream

            async def us(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                request = await self.check(request, context)
                peer = await owner.admit(context, True)
                try:
                    async for item in _items(inner_us(request, context)):
                        yield item
                finally:
                    owner.finish(peer, True, method, context, started)

            return grpc.unary_stream_rpc_method_handler(us, **kw)
        if h.stream_unary:
            inner_su = h.stream_unary

            async def su(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                peer = await owner.admit(context, True)
                try:
                    # admitted: the client may start sending (tensorgrid.rpc.send_admitted)
                    await context.send_initial_metadata(((GO_AHEAD_METADATA_KEY, "1"),))
                    return await _result(inner_su(self.requests(request_iterator, context), context))
                finally:
                    owner.finish(peer, True, method, context, started)

            return grpc.stream_unary_rpc_method_handler(su, **kw)
        inner_ss = h.stream_stream

        async def ss(request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            peer = await owner.admit(context, True)
            try:
                async for item in _items(inner_ss(self.requests(request_iterator, context), context)):
                    yield item
            finally:
                owner.finish(peer, True, method, context, started)

        return grpc.stream_stream_rpc_method_handler(ss, **kw)


async def _result(outcome: Any) -> Any:
    """A handler's answer, whether it is a coroutine or a plain function."""
    return await outcome if inspect.isawaitable(outcome) else outcome


async def _items(outcome: Any) -> AsyncIterator[Any]:
    """A streaming handler's messages: an async generator's, or none for one that wrote them itself."""
    if hasattr(outcome, "__aiter__"):
        async for item in outcome:
            yield item
    elif inspect.isawaitable(outcome):
        await outcome  # it called context.write itself
    elif outcome is not None:
        for item in outcome:
            yield item
