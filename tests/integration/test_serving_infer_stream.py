"""InferStream end to end: a real coordinator process, serving peers over real gRPC (Serve), a
submitter's requests multiplexed on one stream. Answers, refusals (with their retry hints) and
failover as Infer gives them, per request; the stream's bounds (requests in flight, ids in
flight, its session); the SDK (blocking and asyncio) sends on it and falls back to Infer when
it breaks or the coordinator has none."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from tensorgrid.aio import AsyncEndpoints
from tensorgrid.client import Client
from tensorgrid.infer_stream import REOPEN_S, BlockingInferStream
from tensorgrid.localgrid import LocalGrid
from tensorgrid.rpc import INFER_STREAM_IN_FLIGHT, MAX_MESSAGE_BYTES
from tensorgrid.tls import open_channel
from tensorgrid.v1 import serving_pb2, submit_pb2_grpc
from tests.integration.conftest import Assets
from tests.integration.serving_peer import ServePeer, wait_for
from tests.integration.test_serving_peer import create_endpoint, ready, rows

pytestmark = pytest.mark.integration
CODE = {code.value[0]: code for code in grpc.StatusCode}


class Stream:
    """One raw InferStream of a client (request ids chosen by the test)."""

    def __init__(self, c: Client) -> None:
        self.channel = open_channel(c.target, c.tls, aio=True)
        self.call = submit_pb2_grpc.SubmitterServiceStub(self.channel).InferStream(metadata=c.session_metadata())

    async def send(self, rid: int, endpoint: str, data: bytes, timeout_ms: int = 0) -> None:
        await self.call.write(
            serving_pb2.InferRequest(request_id=rid, endpoint_id=endpoint, input=data, timeout_ms=timeout_ms)
        )

    async def read(self, timeout: float = 30) -> serving_pb2.InferResponse:
        reply = await asyncio.wait_for(self.call.read(), timeout)
        assert reply is not grpc.aio.EOF, "the stream ended"
        return reply  # type: ignore[no-any-return]

    async def ended_with(self, timeout: float = 30) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                await self.read(timeout)
        return ended.value.code()  # type: ignore[no-any-return]

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


def _grid(make_grid: Callable[..., LocalGrid]) -> LocalGrid:
    grid = make_grid()
    grid.start_coordinator()
    return grid


def test_requests_on_one_stream_are_answered_refused_and_failed_over_as_infer_does(
    make_grid: Callable[..., LocalGrid], digits: Assets
) -> None:
    grid = _grid(make_grid)
    first = ServePeer(grid.target, behaviour="hold").start()
    with grid.client() as c:
        endpoint = create_endpoint(c, digits, max_queue=2, request_timeout_ms=20_000, max_request_bytes=4096)
        wait_for(ready(c, endpoint), what="a ready replica")
        second: list[ServePeer] = []

        async def scenario() -> None:
            s = Stream(c)
            try:
                await s.send(1, endpoint, rows(1))
                await s.send(2, endpoint, rows(2))
                await asyncio.to_thread(wait_for, lambda: first.requests == 2, 30, "two requests held")
                await s.send(3, endpoint, rows(3))  # the replica is full: refused with a hint, as Infer
                full = await s.read()
                assert (full.request_id, CODE[full.code]) == (3, grpc.StatusCode.RESOURCE_EXHAUSTED)
                assert full.retry_after_ms > 0 and full.error
                await s.send(4, "ab" * 32, rows(4))  # no such endpoint: NOT_FOUND under its id
                await s.send(5, endpoint, b"x" * 5000)  # over the endpoint's max_request_bytes
                refused = {r.request_id: CODE[r.code] for r in (await s.read(), await s.read())}
                assert refused[4] == grpc.StatusCode.NOT_FOUND
                assert refused[5] not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN)
                # failover: the holding node goes away, its requests are answered by the next replica
                second.append(await asyncio.to_thread(lambda: ServePeer(grid.target).start()))
                await asyncio.to_thread(first.stop)
                answers = {r.request_id: r for r in (await s.read(), await s.read())}
                assert sorted(answers) == [1, 2]
                assert all(r.code == 0 and r.node == second[0].address and r.attempts == 2 for r in answers.values())
                assert bytes(answers[1].output) == rows(1) and bytes(answers[2].output) == rows(2)
                await s.send(6, endpoint, rows(6))
                sixth = await s.read()
                assert (sixth.request_id, sixth.code, bytes(sixth.output), sixth.attempts) == (6, 0, rows(6), 1)
                await s.call.done_writing()  # the caller is done: the stream ends OK
                assert await s.call.read() is grpc.aio.EOF and await s.call.code() == grpc.StatusCode.OK
            finally:
                await s.close()

        asyncio.run(scenario())
        for peer in second:
            peer.stop()


def test_a_stream_carries_at_most_its_bound_of_requests_in_flight(
    make_grid: Callable[..., LocalGrid], digits: Assets
) -> None:
    """A caller writing requests without waiting for answers: past the bound, each is refused
    unrun (shown: without the bound the replica is sent all 65)."""
    grid = _grid(make_grid)
    peer = ServePeer(grid.target, behaviour="hold").start()
    with grid.client() as c:
        endpoint = create_endpoint(c, digits, max_queue=1000, request_timeout_ms=60_000)
        wait_for(ready(c, endpoint), what="a ready replica")

        async def scenario() -> None:
            s = Stream(c)
            try:
                for rid in range(1, INFER_STREAM_IN_FLIGHT + 1):
                    await s.send(rid, endpoint, rows(rid))
                await asyncio.to_thread(wait_for, lambda: peer.requests == INFER_STREAM_IN_FLIGHT, 30, "held")
                await s.send(1000, endpoint, rows(0))
                over = await s.read()
                assert (over.request_id, CODE[over.code]) == (1000, grpc.StatusCode.RESOURCE_EXHAUSTED)
                assert "in flight" in over.error and over.retry_after_ms > 0
                await asyncio.sleep(0.5)
                assert peer.requests == INFER_STREAM_IN_FLIGHT  # never routed
            finally:
                await s.close()

        asyncio.run(scenario())
    peer.stop()


def test_a_request_id_already_in_flight_ends_the_stream(make_grid: Callable[..., LocalGrid], digits: Assets) -> None:
    """Two requests under one id could not be told apart by their answers (shown: without the
    check both are routed and the stream goes on)."""
    grid = _grid(make_grid)
    peer = ServePeer(grid.target, behaviour="hold").start()
    with grid.client() as c:
        endpoint = create_endpoint(c, digits, max_queue=8, request_timeout_ms=60_000)
        wait_for(ready(c, endpoint), what="a ready replica")

        async def scenario() -> None:
            s = Stream(c)
            try:
                await s.send(7, endpoint, rows(1))
                await s.send(7, endpoint, rows(2))
                assert await s.ended_with() == grpc.StatusCode.INVALID_ARGUMENT
                assert peer.requests == 1
            finally:
                await s.close()

        asyncio.run(scenario())
    peer.stop()


def test_a_message_over_the_transports_ceiling_ends_the_stream(make_grid: Callable[..., LocalGrid]) -> None:
    """A sender whose channel allows bigger messages than the coordinator takes: refused before
    it is parsed (RESOURCE_EXHAUSTED), as for Infer."""
    grid = _grid(make_grid)
    with grid.client() as c:
        options = [("grpc.max_send_message_length", 2 * MAX_MESSAGE_BYTES)]
        metadata = c.session_metadata()

        async def scenario() -> grpc.StatusCode:
            if c.tls.plain_text(c.target):
                channel = grpc.aio.insecure_channel(c.target, options=options)
            else:
                channel = grpc.aio.secure_channel(c.target, c.tls.credentials(), options=options)
            call = submit_pb2_grpc.SubmitterServiceStub(channel).InferStream(metadata=metadata)
            try:
                big = serving_pb2.InferRequest(
                    request_id=1, endpoint_id="ab" * 32, input=b"x" * (MAX_MESSAGE_BYTES + 1)
                )
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await asyncio.wait_for(call.write(big), 30)
                    await asyncio.wait_for(call.read(), 30)
                return ended.value.code()  # type: ignore[no-any-return]
            finally:
                call.cancel()
                await channel.close()

        assert asyncio.run(scenario()) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_stream_does_not_outlive_its_session_and_the_sdk_falls_back_to_infer(
    make_grid: Callable[..., LocalGrid], digits: Assets
) -> None:
    """A session pushed out (32 newer ones of the same key) ends the streams opened with it at
    their next request (shown: without the per-request check that request is answered); the
    SDK's request on such a stream is sent again as a unary Infer on a renewed session."""
    grid = _grid(make_grid)
    peer = ServePeer(grid.target).start()
    with grid.client() as c:
        endpoint = create_endpoint(c, digits)
        wait_for(ready(c, endpoint), what="a ready replica")

        async def scenario() -> None:
            s = Stream(c)
            endpoints = AsyncEndpoints(c)
            try:
                await s.send(1, endpoint, rows(1))
                assert (await s.read()).code == 0
                answer = await endpoints.infer_bytes(endpoint, rows(2))  # on the SDK's stream
                assert answer.output == rows(2) and endpoints._stream._call is not None
                blocking = await asyncio.to_thread(c.endpoints.infer_bytes, endpoint, rows(12))  # the Client's
                assert blocking.output == rows(12) and c.infer_stream._call is not None
                for _ in range(32):  # the streams' session is pushed out
                    await asyncio.to_thread(c.open_session)
                c.session.forget()  # the SDK's too: it opens a new one when it next needs one
                await s.send(2, endpoint, rows(3))
                assert await s.ended_with() == grpc.StatusCode.UNAUTHENTICATED
                answer = await endpoints.infer_bytes(endpoint, rows(4))  # its stream ends; Infer answers
                assert answer.output == rows(4)
                answer = await endpoints.infer_bytes(endpoint, rows(5))  # a new stream, a new session
                assert answer.output == rows(5) and endpoints._stream._call is not None
                for i in (14, 15):  # the same for the blocking Client: Infer, then a new stream
                    blocking = await asyncio.to_thread(c.endpoints.infer_bytes, endpoint, rows(i))
                    assert blocking.output == rows(i)
                assert c.infer_stream._call is not None
            finally:
                await s.close()
                await endpoints.close()

        asyncio.run(scenario())
    peer.stop()


def test_the_sdk_uses_infer_where_the_coordinator_has_no_infer_stream() -> None:
    """A coordinator without InferStream (an older one): UNIMPLEMENTED, and every call is a unary
    Infer from then on."""

    async def scenario() -> None:
        async def infer(request: Any, context: Any) -> serving_pb2.InferResponse:
            return serving_pb2.InferResponse(output=request.input, node="old", attempts=1)

        handler = grpc.method_handlers_generic_handler(
            "tensorgrid.v1.SubmitterService",
            {
                "Infer": grpc.unary_unary_rpc_method_handler(
                    infer,
                    request_deserializer=serving_pb2.InferRequest.FromString,
                    response_serializer=serving_pb2.InferResponse.SerializeToString,
                )
            },
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        client = Client(f"127.0.0.1:{port}", insecure=True)
        endpoints = AsyncEndpoints(client)

        async def no_session(renew: bool = False) -> tuple[tuple[str, str], ...]:
            return ()  # this server checks none

        endpoints._metadata = no_session  # type: ignore[method-assign]
        endpoints._stream._metadata = no_session
        try:
            for i in range(3):
                answer = await endpoints.infer_bytes("ab" * 32, rows(i))
                assert answer.output == rows(i) and answer.node == "old"
            # A first stream that broke otherwise (a loaded machine: its status not yet the server's
            # UNIMPLEMENTED) is tried again after REOPEN_S, its calls unary meanwhile: bounded wait.
            until = time.monotonic() + 30
            while not endpoints._stream.unsupported and time.monotonic() < until:
                await asyncio.sleep(REOPEN_S)
                answer = await endpoints.infer_bytes("ab" * 32, rows(3))
                assert answer.output == rows(3) and answer.node == "old"
            assert endpoints._stream.unsupported
            blocking = BlockingInferStream(client.stub, lambda: ())  # the blocking Client's, alike
            req = serving_pb2.InferRequest(endpoint_id="ab" * 32, input=rows(0))
            assert await asyncio.to_thread(blocking.infer, req, 10) is None and blocking.unsupported
            assert await asyncio.to_thread(blocking.infer, req, 10) is None
        finally:
            await endpoints.close()
            client.close()
            await server.stop(None)

    asyncio.run(scenario())
