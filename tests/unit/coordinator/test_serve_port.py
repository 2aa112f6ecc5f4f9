"""api.serve_port and tensorgrid.serving.wire: the Serve stream as frames over TCP.

A stream belongs to the node whose session token opened it; a made-up token, garbage, an
oversize frame or a stalled greeting ends the connection before anything reaches the router;
the node's client sees the same errors a gRPC Serve call raises, and falls back to gRPC when
the port cannot be reached."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from coordinator.api.limits import PeerLimiter
from coordinator.api.serve_port import ServePort
from coordinator.api.serving import StreamRefused
from coordinator.api.sessions import FailureLimiter, SessionCache
from coordinator.config import PeerLimits, ServeSettings
from tensorgrid.serving import wire
from tensorgrid.v1 import serving_pb2

NODE = "0x" + "11" * 20
TOKEN = "t" * 43


class _Link:
    def __init__(self, node: str) -> None:
        self.node = node
        self.outbox: asyncio.Queue[serving_pb2.ServeDown | None] = asyncio.Queue()
        self.up: list[serving_pb2.ServeUp] = []
        self.read_error: BaseException | None = None
        self.closed = asyncio.Event()


class _Api:
    """ServingApi's attach/stream, recording what a node sends; each ServeUp is answered with a
    ServeDown carrying one request whose id counts the messages seen."""

    def __init__(self) -> None:
        self.links: list[_Link] = []

    async def attach(self, node: str, first: serving_pb2.ServeUp | None, via: str = "gRPC") -> _Link:
        if first is None or first.WhichOneof("msg") != "hello":
            raise StreamRefused(grpc.StatusCode.FAILED_PRECONDITION, "a Serve stream starts with ServeHello")
        link = _Link(node)
        link.up.append(first)
        self.links.append(link)
        return link

    async def stream(self, link: _Link, up: AsyncIterator[serving_pb2.ServeUp]) -> AsyncIterator[serving_pb2.ServeDown]:
        async def read() -> None:
            try:
                async for msg in up:
                    link.up.append(msg)
                    link.outbox.put_nowait(
                        serving_pb2.ServeDown(requests=[serving_pb2.ServeRequest(request_id=len(link.up))])
                    )
            except Exception as e:
                link.read_error = e
            finally:
                link.closed.set()
                link.outbox.put_nowait(None)

        task = asyncio.ensure_future(read())
        try:
            while (msg := await link.outbox.get()) is not None:
                yield msg
        finally:
            task.cancel()


async def _lookup(h: str) -> tuple[str, int] | None:
    from coordinator.api.sessions import token_hash

    return (NODE, 1 << 62) if h == token_hash(TOKEN) else None


async def _port(api: _Api, **settings: Any) -> ServePort:
    failures = FailureLimiter(3, 60_000)
    port = ServePort(
        ServeSettings(**settings),
        api,
        SessionCache(_lookup),
        failures,
        PeerLimiter(PeerLimits()),
        None,  # type: ignore[arg-type]
    )
    await port.start("127.0.0.1", 0)
    return port


def _hello() -> bytes:
    return wire.frame(
        wire.MESSAGE, serving_pb2.ServeUp(hello=serving_pb2.ServeHello(max_replicas=2)).SerializeToString()
    )


async def _status(reader: asyncio.StreamReader) -> tuple[grpc.StatusCode, str]:
    while True:
        got = await asyncio.wait_for(wire.read_frame(reader), 5)
        assert got is not None, "the connection ended without a status"
        if got[0] == wire.STATUS:
            return wire.parse_status(got[1])


def test_frames_round_trip_and_refuse_oversize_unknown_and_cut_off_frames() -> None:
    async def scenario() -> None:
        def reader_of(data: bytes) -> asyncio.StreamReader:
            r = asyncio.StreamReader()
            r.feed_data(data)
            r.feed_eof()
            return r

        body = serving_pb2.ServeUp(hello=serving_pb2.ServeHello(max_replicas=3)).SerializeToString()
        r = reader_of(wire.frame(wire.MESSAGE, body) + wire.status_frame(grpc.StatusCode.UNAUTHENTICATED, "no"))
        assert await wire.read_frame(r) == (wire.MESSAGE, body)
        kind, status = await wire.read_frame(r)  # type: ignore[misc]
        assert kind == wire.STATUS and wire.parse_status(status) == (grpc.StatusCode.UNAUTHENTICATED, "no")
        assert await wire.read_frame(r) is None  # a clean end between frames
        # a head claiming 4 GiB: refused from its head alone, its body never awaited
        with pytest.raises(wire.WireError, match="exceeds"):
            await wire.read_frame(reader_of(struct.pack(">BI", wire.MESSAGE, (1 << 32) - 1)))
        with pytest.raises(wire.WireError, match="exceeds"):
            await wire.read_frame(reader_of(wire.frame(wire.MESSAGE, b"x" * 100)), limit=99)
        with pytest.raises(wire.WireError, match="unknown kind"):
            await wire.read_frame(reader_of(wire.frame(7, b"")))
        with pytest.raises(wire.WireError, match="inside a frame"):
            await wire.read_frame(reader_of(wire.frame(wire.MESSAGE, b"abcdef")[:-2]))
        assert await wire.read_greeting(reader_of(wire.greeting(TOKEN))) == TOKEN
        with pytest.raises(wire.WireError):
            await wire.read_greeting(reader_of(b"GET / HTTP/1.1\r\n\r\n"))
        with pytest.raises(wire.WireError, match="exceeds"):
            await wire.read_greeting(reader_of(wire.MAGIC + (4096).to_bytes(2, "big") + b"t" * 4096))

    asyncio.run(scenario())


def test_a_stream_opened_with_a_nodes_token_is_that_nodes_and_carries_messages_both_ways() -> None:
    async def scenario() -> None:
        api = _Api()
        port = await _port(api)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
            writer.write(wire.greeting(TOKEN) + _hello())
            for i in range(3):
                up = serving_pb2.ServeUp(replies=[serving_pb2.ServeReply(request_id=i + 1, done=True)])
                writer.write(wire.frame(wire.MESSAGE, up.SerializeToString()))
                kind, body = await asyncio.wait_for(wire.read_frame(reader), 5)  # type: ignore[misc]
                assert kind == wire.MESSAGE
                assert serving_pb2.ServeDown.FromString(body).requests[0].request_id == i + 2
            writer.write(wire.status_frame(grpc.StatusCode.OK))  # the node half-closes
            assert await _status(reader) == (grpc.StatusCode.OK, "")
            (link,) = api.links
            assert link.node == NODE and len(link.up) == 4 and link.read_error is None
            assert port.peers.in_flight(NODE) == (0, 0)  # the stream was counted, and released
            writer.close()
        finally:
            port.close()

    asyncio.run(scenario())


def test_a_made_up_token_is_refused_and_too_many_failures_are_refused_unread() -> None:
    async def scenario() -> None:
        api = _Api()
        port = await _port(api)
        try:
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
                writer.write(wire.greeting("a-stolen-guess") + _hello())
                code, details = await _status(reader)
                assert code == grpc.StatusCode.UNAUTHENTICATED, details
                writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
            writer.write(wire.greeting(TOKEN) + _hello())  # even a good token now waits out the window
            assert (await _status(reader))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
            writer.close()
            assert api.links == []
        finally:
            port.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("opening", ["garbage", "no hello", "stall"])
def test_garbage_a_stream_without_hello_or_a_stalled_greeting_never_attaches(opening: str) -> None:
    async def scenario() -> grpc.StatusCode:
        api = _Api()
        port = await _port(api, hello_timeout_s=0.3)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
            if opening == "garbage":
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            elif opening == "no hello":
                writer.write(wire.greeting(TOKEN) + wire.frame(wire.MESSAGE, serving_pb2.ServeUp().SerializeToString()))
            else:
                writer.write(wire.greeting(TOKEN)[:5])
            code, _ = await _status(reader)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
            writer.close()
            assert api.links == [] and port._pending == {}
            return code
        finally:
            port.close()

    want = {
        "garbage": grpc.StatusCode.INVALID_ARGUMENT,
        "no hello": grpc.StatusCode.FAILED_PRECONDITION,
        "stall": grpc.StatusCode.DEADLINE_EXCEEDED,
    }
    assert asyncio.run(scenario()) == want[opening]


def test_an_oversize_frame_ends_an_authenticated_stream_before_its_body_is_read() -> None:
    async def scenario() -> None:
        api = _Api()
        port = await _port(api)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
            writer.write(wire.greeting(TOKEN) + _hello())
            writer.write(struct.pack(">BI", wire.MESSAGE, wire.MAX_FRAME_BYTES + 1) + b"x" * 1024)
            await writer.drain()
            (link,) = api.links if api.links else [None]
            while link is None:
                await asyncio.sleep(0.01)
                link = api.links[0] if api.links else None
            await asyncio.wait_for(link.closed.wait(), 5)
            assert isinstance(link.read_error, wire.WireError) and "exceeds" in str(link.read_error)
            assert len(link.up) == 1  # the hello alone reached the router
            await asyncio.wait_for(reader.read(), 5)  # the coordinator ends the connection
            writer.close()
        finally:
            port.close()

    asyncio.run(scenario())


def test_the_nodes_client_gets_grpc_errors_and_falls_back_to_grpc_when_the_port_is_closed() -> None:
    async def scenario() -> None:
        api = _Api()
        port = await _port(api)

        async def ups(n: int) -> AsyncIterator[serving_pb2.ServeUp]:
            yield serving_pb2.ServeUp(hello=serving_pb2.ServeHello(max_replicas=1))
            for i in range(n):
                yield serving_pb2.ServeUp(replies=[serving_pb2.ServeReply(request_id=i + 1, done=True)])
                await asyncio.sleep(0.01)

        def no_fallback(up: Any) -> Any:
            raise AssertionError("the port was reachable")

        unreachable: list[BaseException] = []
        try:
            call = wire.FramedServeCall("127.0.0.1", port.port, TOKEN, ups(2), None, no_fallback, unreachable.append)
            got = [m.requests[0].request_id async for m in call]
            assert got == [2, 3] and api.links[0].node == NODE  # then the coordinator ended it: OK

            bad = wire.FramedServeCall("127.0.0.1", port.port, "forged", ups(1), None, no_fallback, unreachable.append)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                _ = [m async for m in bad]
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert unreachable == []
        finally:
            port.close()
            await asyncio.sleep(0.05)

        class _Grpc:
            def __init__(self, up: AsyncIterator[serving_pb2.ServeUp]) -> None:
                self.up = up

            def __aiter__(self) -> AsyncIterator[serving_pb2.ServeDown]:
                async def run() -> AsyncIterator[serving_pb2.ServeDown]:
                    async for _ in self.up:
                        yield serving_pb2.ServeDown()

                return run()

            def cancel(self) -> None:
                pass

        closed = wire.FramedServeCall("127.0.0.1", port.port, TOKEN, ups(1), None, _Grpc, unreachable.append)
        assert len([m async for m in closed]) == 2 and closed.transport == "grpc"
        assert len(unreachable) == 1 and isinstance(unreachable[0], OSError)

    asyncio.run(scenario())


def test_a_frame_of_megabytes_under_the_limit_passes_whole() -> None:
    async def scenario() -> None:
        api = _Api()
        port = await _port(api)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
            big = serving_pb2.ServeUp(
                replies=[serving_pb2.ServeReply(request_id=1, done=True, output=b"\1" * (5 << 20))]
            )
            writer.write(wire.greeting(TOKEN) + _hello() + wire.frame(wire.MESSAGE, big.SerializeToString()))
            kind, _ = await asyncio.wait_for(wire.read_frame(reader), 10)  # type: ignore[misc]
            assert kind == wire.MESSAGE and api.links[0].up[1] == big
            writer.close()
        finally:
            port.close()

    asyncio.run(scenario())
