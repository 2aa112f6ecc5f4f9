"""The SDK's InferStream (tensorgrid.infer_stream) ends a request unanswered within its timeout
as a unary Infer would (DEADLINE_EXCEEDED), forgets it, and still returns an answer that comes
in time; the stream here is a stand-in for gRPC's call that answers only what it is told to."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from tensorgrid.infer_stream import InferStream
from tensorgrid.session import CoordinatorError
from tensorgrid.v1 import serving_pb2


class Call:
    """A bidirectional call: records the requests written; answers those in `answer`."""

    def __init__(self, answer: set[bytes]) -> None:
        self.answer, self.written = answer, asyncio.Queue[serving_pb2.InferRequest]()
        self.ended = asyncio.Event()

    async def write(self, request: serving_pb2.InferRequest) -> None:
        self.written.put_nowait(serving_pb2.InferRequest(request_id=request.request_id, input=request.input))

    def __aiter__(self) -> Any:
        return self._replies()

    async def _replies(self) -> Any:
        while True:
            request = await self.written.get()
            if request.input in self.answer:
                yield serving_pb2.InferResponse(request_id=request.request_id, output=b"out:" + request.input)

    async def done_writing(self) -> None:
        self.ended.set()

    def cancel(self) -> None:
        pass


class Stub:
    def __init__(self, call: Call) -> None:
        self.call = call

    def InferStream(self, metadata: Any = None) -> Call:  # noqa: N802 (gRPC's name)
        return self.call


async def _no_metadata() -> tuple[tuple[str, str], ...]:
    return ()


def test_a_request_unanswered_within_its_timeout_fails_as_infer_would_and_is_forgotten() -> None:
    async def scenario() -> None:
        stream = InferStream(Stub(Call(answer={b"quick"})), _no_metadata)
        with pytest.raises(CoordinatorError) as caught:
            await stream.infer(serving_pb2.InferRequest(input=b"never"), 0.05)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and not stream._pending
        reply = await stream.infer(serving_pb2.InferRequest(input=b"quick"), 10.0)  # the stream still serves
        assert reply is not None and reply.output == b"out:quick" and not stream._pending
        with pytest.raises(CoordinatorError) as caught:  # no time left at all: the same, not a hang
            await stream.infer(serving_pb2.InferRequest(input=b"never"), -1.0)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        await stream.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))  # a lost deadline fails here, it does not hang
