"""Node authentication: a stateless signed challenge, then a session token checked in one interceptor.

A challenge nonce is time ‖ random ‖ HMAC(secret, address ‖ time ‖ random); the secret is
shared by all replicas through the database, so any replica can check any nonce. Each nonce
is burnt on use, so a captured registration cannot be replayed.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from coordinator.errors import PermissionDenied
from tensorgrid.rpc import SESSION_METADATA_KEY

CHALLENGE_TTL_MS = 120_000
current_node: contextvars.ContextVar[str] = contextvars.ContextVar("current_node")

_NODE_SERVICE = "/tensorgrid.v1.NodeService/"
_OPEN = {_NODE_SERVICE + "GetChallenge", _NODE_SERVICE + "Register"}


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


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionCache:
    """Token → node address, backed by the database so sessions survive a restart.

    Each entry keeps its session's expiry (fixed when the session opens), so a cached
    session stops working at the same moment as one read from the database.
    """

    def __init__(self, lookup: Callable[[str], Awaitable[tuple[str, int] | None]], max_entries: int = 100_000) -> None:
        self._lookup = lookup
        self._cache: dict[str, tuple[str, int]] = {}  # token hash → (address, expires_ms)
        self._max = max_entries

    def add(self, token: str, address: str, expires_ms: int) -> None:
        if len(self._cache) >= self._max:
            self._evict(_now_ms())
        self._cache[token_hash(token)] = (address, expires_ms)

    async def resolve(self, token: str) -> str | None:
        h = token_hash(token)
        now = _now_ms()
        entry = self._cache.get(h)
        if entry is None:
            entry = await self._lookup(h)
            if entry is None:
                return None
            if len(self._cache) >= self._max:
                self._evict(now)
            self._cache[h] = entry
        address, expires_ms = entry
        if expires_ms < now:
            self._cache.pop(h, None)
            return None
        return address

    def _evict(self, now: int) -> None:
        """Drop expired entries; if that frees too little, the oldest half (they reload on use)."""
        self._cache = {h: e for h, e in self._cache.items() if e[1] >= now}
        if len(self._cache) >= self._max:
            keep = list(self._cache.items())[len(self._cache) // 2 :]
            self._cache = dict(keep)


def _now_ms() -> int:
    return int(time.time() * 1000)


class SessionInterceptor(grpc.aio.ServerInterceptor):
    """Every NodeService call except the two that open a session needs a valid session token."""

    def __init__(self, sessions: SessionCache) -> None:
        self._sessions = sessions

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or not method.startswith(_NODE_SERVICE) or method in _OPEN:
            return handler
        token = dict(details.invocation_metadata or ()).get(SESSION_METADATA_KEY, "")
        address = await self._sessions.resolve(token) if isinstance(token, str) and token else None
        return _bind(handler, address)


def _bind(handler: grpc.RpcMethodHandler, address: str | None) -> grpc.RpcMethodHandler:
    """Wrap the handler so it runs with current_node set, or aborts UNAUTHENTICATED."""

    async def deny(context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid session: register again")

    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def uu(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if address is None:
                await deny(context)
            current_node.set(address)  # type: ignore[arg-type]
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(uu, **kw)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def us(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if address is None:
                await deny(context)
            current_node.set(address)  # type: ignore[arg-type]
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(us, **kw)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def su(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            if address is None:
                await deny(context)
            current_node.set(address)  # type: ignore[arg-type]
            return await inner_su(request_iterator, context)

        return grpc.stream_unary_rpc_method_handler(su, **kw)
    raise TypeError(f"unsupported handler type for {handler}")
