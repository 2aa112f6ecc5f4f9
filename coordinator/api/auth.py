"""Authentication of nodes and submitters: a stateless signed challenge, then a session token
checked in one interceptor for both services.

A challenge nonce is time ‖ random ‖ HMAC(secret, address ‖ time ‖ random); the secret is
shared by all replicas through the database, so any replica can check any nonce. Each nonce
is burnt on use, so a captured registration cannot be replayed. Nodes open a session with
NodeService.Register, submitters with SubmitterService.OpenSession; every other call carries
the token in the `x-tensorgrid-session` metadata key, except the calls open to anyone:

- NodeService.GetChallenge, SubmitterService.GetChallenge: a nonce costs one HMAC, no state.
- SubmitterService.ListNodes, GetEarnings, GetEpoch: the grid's nodes, their record, earnings
  and epochs are public by design (they are on chain, and submitters choose a grid by them).

A dashboard session (OpenSession with scope "dashboard", the link `tensorgrid dashboard` prints)
lives in its own table and cache, which this interceptor never reads: its token is refused here
with UNAUTHENTICATED like one never issued, whatever the call.

A peer host that fails authentication too often (a bad or expired token, a refused Register
or OpenSession) is refused with RESOURCE_EXHAUSTED and a retry-after until its window passes;
calls with a valid session are never refused for it.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from coordinator.api.sessions import FailureLimiter, SessionCache, peer_host, token_hash
from coordinator.errors import PermissionDenied
from tensorgrid.rpc import SESSION_METADATA_KEY

CHALLENGE_TTL_MS = 120_000
RETRY_AFTER_KEY = "retry-after-ms"
current_node: contextvars.ContextVar[str] = contextvars.ContextVar("current_node")
current_submitter: contextvars.ContextVar[str] = contextvars.ContextVar("current_submitter")
# the sha256 of the session token the call came with (a node's heartbeat tells which session it is)
current_session: contextvars.ContextVar[str] = contextvars.ContextVar("current_session")

_NODE = "/tensorgrid.v1.NodeService/"
_SUBMITTER = "/tensorgrid.v1.SubmitterService/"
PUBLIC = frozenset(
    {
        _NODE + "GetChallenge",
        _SUBMITTER + "GetChallenge",
        _SUBMITTER + "ListNodes",
        _SUBMITTER + "GetEarnings",
        _SUBMITTER + "GetEpoch",
    }
)
OPENERS = frozenset({_NODE + "Register", _SUBMITTER + "OpenSession"})

__all__ = ["FailureLimiter", "SessionCache", "SessionInterceptor", "token_hash"]


def make_challenge(secret: bytes, address: str, now_ms: int) -> bytes:
    head = now_ms.to_bytes(8, "big") + secrets.token_bytes(16)
    return head + hmac.new(secret, address.lower().encode() + head, hashlib.sha256).digest()[:16]


def check_challenge(secret: bytes, address: str, nonce: bytes, now_ms: int) -> None:
    """Raise PermissionDenied unless nonce was issued by us, for address, and is fresh."""
    if len(nonce) != 40:
        raise PermissionDenied("malformed challenge nonce: call GetChallenge first")
    head, mac = nonce[:24], nonce[24:]
    want = hmac.new(secret, address.lower().encode() + head, hashlib.sha256).digest()[:16]
    if not hmac.compare_digest(mac, want):
        raise PermissionDenied("challenge nonce was not issued for this address")
    if now_ms - int.from_bytes(head[:8], "big") > CHALLENGE_TTL_MS:
        raise PermissionDenied("challenge expired: ask for a new one")


class SessionInterceptor(grpc.aio.ServerInterceptor):
    """Every call of both services but the public ones and the two that open a session needs a
    valid session token of its service; the handler then runs with current_node or
    current_submitter set to the session's address."""

    def __init__(self, nodes: SessionCache, submitters: SessionCache, limiter: FailureLimiter) -> None:
        self._caches = {_NODE: (nodes, current_node), _SUBMITTER: (submitters, current_submitter)}
        self._limiter = limiter
        # method → (its registered handler, that handler wrapped): the token is read in the call,
        # so one wrapper serves every call of a method (not a new one built per call)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None:
            return None
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, self._guard(method, handler))
        return known[1]

    def _guard(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler behind the session check its method needs (itself for public methods)."""
        service = _NODE if method.startswith(_NODE) else _SUBMITTER if method.startswith(_SUBMITTER) else None
        if service is None or method in PUBLIC:
            return handler
        limiter = self._limiter
        if method in OPENERS:

            async def guard_opener(context: grpc.aio.ServicerContext) -> None:
                await _refuse_if_limited(limiter, context)

            return _wrap(handler, guard_opener, lambda context: limiter.failed(peer_host(context.peer())))
        cache, var = self._caches[service]
        hint = "register again" if service == _NODE else "open a session (GetChallenge, OpenSession)"

        async def bind(context: grpc.aio.ServicerContext) -> None:
            token = dict(context.invocation_metadata() or ()).get(SESSION_METADATA_KEY, "")
            address = await cache.resolve(token) if isinstance(token, str) and token else None
            if address is None:
                await _refuse_if_limited(limiter, context)
                limiter.failed(peer_host(context.peer()))
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"no valid session: {hint}")
            var.set(address)  # type: ignore[arg-type]
            current_session.set(token_hash(token) if isinstance(token, str) else "")

        return _wrap(handler, bind, None)


async def _refuse_if_limited(limiter: FailureLimiter, context: grpc.aio.ServicerContext) -> None:
    wait = limiter.retry_after_ms(peer_host(context.peer()))
    if wait:
        context.set_trailing_metadata(((RETRY_AFTER_KEY, str(wait)),))
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"too many failed authentications from your address: retry after {wait / 1000:.0f} s",
        )


Before = Callable[[grpc.aio.ServicerContext], Awaitable[None]]
OnError = Callable[[grpc.aio.ServicerContext], None] | None


def _wrap(handler: grpc.RpcMethodHandler, before: Before, on_error: OnError) -> grpc.RpcMethodHandler:
    """The handler, run after `before` (which may abort); on_error sees the call fail."""

    def failed(context: grpc.aio.ServicerContext) -> None:
        if on_error is not None:
            on_error(context)

    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def uu(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await before(context)
            try:
                return await inner_uu(request, context)
            except BaseException:
                failed(context)
                raise

        return grpc.unary_unary_rpc_method_handler(uu, **kw)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def us(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await before(context)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(us, **kw)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def su(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            await before(context)
            return await inner_su(request_iterator, context)

        return grpc.stream_unary_rpc_method_handler(su, **kw)
    if handler.stream_stream:
        inner_ss = handler.stream_stream

        async def ss(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            await before(context)
            async for item in inner_ss(request_iterator, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(ss, **kw)
    raise TypeError(f"unsupported handler type for {handler}")
