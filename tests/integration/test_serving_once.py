"""A request sent again is answered once, end to end: a real coordinator process, a serving
peer over real gRPC counting what its replica was sent. The SDK keys every request
(InferRequest.request_key) and sends the same key when it sends a request again (a broken
InferStream, a refusal it retries); before, such a repeat ran again on a replica and was billed
again. Here the repeats are sent by hand: unary twice, on a stream then unary (the SDK's
fallback), another input under a used key (refused), and no key (runs each time)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import grpc
import pytest

from tensorgrid.localgrid import LocalGrid
from tensorgrid.v1 import serving_pb2
from tests.integration.conftest import Assets
from tests.integration.serving_peer import ServePeer, wait_for
from tests.integration.test_serving_infer_stream import Stream
from tests.integration.test_serving_peer import create_endpoint, ready, rows

pytestmark = pytest.mark.integration


def test_a_keyed_request_sent_again_runs_once(make_grid: Callable[..., LocalGrid], digits: Assets) -> None:
    grid = make_grid()
    grid.start_coordinator()
    peer = ServePeer(grid.target).start()
    try:
        with grid.client() as c:
            endpoint = create_endpoint(c, digits, request_timeout_ms=20_000)
            wait_for(ready(c, endpoint), what="a ready replica")
            md = c.session_metadata()

            def unary(data: bytes, key: bytes) -> serving_pb2.InferResponse:
                req = serving_pb2.InferRequest(endpoint_id=endpoint, input=data, request_key=key)
                return c._stub.Infer(req, metadata=md, timeout=15)

            key = os.urandom(16)
            first, again = unary(rows(1), key), unary(rows(1), key)
            assert first.output == again.output and peer.requests == 1  # the repeat was not run

            with pytest.raises(grpc.RpcError) as refused:
                unary(rows(2), key)  # another input under that key
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and peer.requests == 1

            streamed_key = os.urandom(16)

            async def on_a_stream() -> serving_pb2.InferResponse:
                s = Stream(c)
                try:
                    req = serving_pb2.InferRequest(request_id=1, endpoint_id=endpoint, input=rows(3))
                    req.request_key = streamed_key
                    await s.call.write(req)
                    return await s.read()
                finally:
                    await s.close()

            streamed = asyncio.run(on_a_stream())
            assert streamed.code == 0 and peer.requests == 2
            fallback = unary(rows(3), streamed_key)  # the SDK's unary retry of a request its stream answered
            assert fallback.output == streamed.output and peer.requests == 2

            unary(rows(4), b""), unary(rows(4), b"")  # no key: each send is a request of its own
            assert peer.requests == 4
    finally:
        peer.stop()
