"""tensorgrid.rpc.send_admitted against real grpc.aio servers: messages go once the server's
go-ahead comes, or after the wait when it sends none (a coordinator from before the go-ahead);
a refusal before the go-ahead is the server's own code; cancelled, the call ends on the server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from tensorgrid.rpc import GO_AHEAD_METADATA_KEY, send_admitted

Handler = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Awaitable[bytes]]


def _same(b: bytes) -> bytes:
    return b


async def pieces(n: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield b"x" * 1000


async def with_server(handler: Handler, scenario: Callable[[Any], Awaitable[None]]) -> None:
    server = grpc.aio.server()
    method = grpc.stream_unary_rpc_method_handler(handler, request_deserializer=_same, response_serializer=_same)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {"M": method}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await scenario(channel.stream_unary("/t.S/M", request_serializer=_same, response_deserializer=_same))
    finally:
        await server.stop(0)


async def count(requests: AsyncIterator[bytes]) -> bytes:
    return str(sum([len(r) async for r in requests])).encode()


def test_messages_go_after_the_go_ahead_and_a_refusal_before_it_keeps_its_code() -> None:
    async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        if dict(context.invocation_metadata() or ()).get("who") != "known":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "who are you")
        await context.send_initial_metadata(((GO_AHEAD_METADATA_KEY, "1"),))
        return await count(requests)

    async def scenario(method: Any) -> None:
        assert await send_admitted(method(metadata=(("who", "known"),), timeout=10), pieces(300)) == b"300000"
        for _ in range(20):  # 3 MB each: far more than HTTP/2 lets a client write ahead
            try:
                await send_admitted(method(metadata=(("who", "stranger"),), timeout=10), pieces(3000))
            except grpc.aio.AioRpcError as e:
                assert (e.code(), e.details()) == (grpc.StatusCode.UNAUTHENTICATED, "who are you")
            else:
                raise AssertionError("a refused call answered")

    asyncio.run(with_server(handler, scenario))


def test_a_server_without_a_go_ahead_gets_the_messages_after_the_wait() -> None:
    async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        return await count(requests)

    async def scenario(method: Any) -> None:
        assert await send_admitted(method(timeout=10), pieces(5), wait_s=0.2) == b"5000"

    asyncio.run(with_server(handler, scenario))


def test_a_cancelled_send_ends_its_call_on_the_server() -> None:
    ended = asyncio.Event()

    async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        context.add_done_callback(lambda _: ended.set())
        await asyncio.sleep(60)  # never admits, never answers
        return b""

    async def scenario(method: Any) -> None:
        sending = asyncio.ensure_future(send_admitted(method(timeout=60), pieces(1), wait_s=30))
        await asyncio.sleep(0.3)
        sending.cancel()
        await asyncio.wait_for(ended.wait(), 10)  # the server saw the call end, well before its 60 s
        assert sending.cancelled()

    asyncio.run(with_server(handler, scenario))
