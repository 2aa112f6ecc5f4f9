"""InferStream's memory bound against a caller that writes requests and never reads the answers:
the stream stops reading its requests once INFER_STREAM_IN_FLIGHT answers wait to be sent, so
what the coordinator holds for one stream is bounded however long the caller writes.

Here in memory: the handler (coordinator.api.infer_stream.InferStreams.serve) is driven as gRPC
drives it, its answers pulled only when the test says; the router answers at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from coordinator.api.auth import current_submitter
from coordinator.api.infer_stream import InferStreams
from coordinator.services.serving.once import Once
from tensorgrid.v1 import serving_pb2

ME = "0x" + "ab" * 20
LIMIT = 8
OUTPUT = b"\0" * 1024


class Sessions:
    async def resolve(self, token: str) -> str:
        return ME


class Router:
    def __init__(self) -> None:
        self.calls = 0
        self.once = Once()  # the requests here carry no key: each runs

    async def infer(self, ep: Any, data: bytes, timeout_ms: int, seed: int) -> tuple[bytes, str, int]:
        self.calls += 1
        return OUTPUT, "node", 1


class Caller:
    """Writes `total` requests as fast as the stream reads them; counts how many it read."""

    def __init__(self, total: int) -> None:
        self.total, self.read = total, 0

    async def requests(self) -> AsyncIterator[serving_pb2.InferRequest]:
        for rid in range(1, self.total + 1):
            await asyncio.sleep(0)  # a network read: the stream's other tasks run meanwhile
            self.read += 1
            yield serving_pb2.InferRequest(request_id=rid, endpoint_id="ep", input=b"x")


class Context:
    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: Any, message: str) -> None:
        raise AssertionError(f"the stream ended: {code} {message}")


async def endpoint(endpoint_id: str) -> Any:
    return SimpleNamespace(job_id=endpoint_id)


async def _settle() -> None:
    for _ in range(200):  # every task runs until it waits on something
        await asyncio.sleep(0)


def _run(total: int, pulled: int) -> tuple[int, int, int]:
    """A caller writing `total` requests, of whose answers the handler gets to send `pulled`:
    (requests read, router calls, answers sent)."""

    async def scenario() -> tuple[int, int, int]:
        current_submitter.set(ME)
        router, caller = Router(), Caller(total)
        streams = InferStreams(endpoint, router, Sessions(), in_flight=LIMIT)  # type: ignore[arg-type]
        answers = streams.serve(caller.requests(), Context())  # type: ignore[arg-type]
        sent = 0
        for _ in range(pulled):
            reply = await anext(answers)
            assert (reply.code, reply.output, reply.error) == (0, OUTPUT, "")
            sent += 1
        await _settle()
        result = (caller.read, router.calls, sent)
        await answers.aclose()  # the caller went away: its tasks are cancelled
        return result

    return asyncio.run(scenario())


def test_a_caller_that_never_reads_answers_stops_being_read() -> None:
    read, ran, sent = _run(total=10_000, pulled=1)
    # one answer sent; at most LIMIT queued, LIMIT more waiting for room, one request read and held
    assert sent == 1
    assert ran <= 1 + 2 * LIMIT + 1, ran
    assert read <= 1 + 2 * LIMIT + 2, read


def test_answers_flow_when_the_caller_reads_them() -> None:
    read, ran, sent = _run(total=200, pulled=200)
    assert (read, ran, sent) == (200, 200, 200)
