"""Abuse of endpoints over real gRPC and the serve port: strangers, forged or mismatched
receipts, oversize requests and frames, and replies to requests a node was never sent."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import grpc
import pytest
import torch

from tensorgrid.crypto import Signer, cancel_message, sign_message
from tensorgrid.localgrid import LocalGrid
from tensorgrid.nodeclient import NodeClient
from tensorgrid.serving import tensors_to_bytes, wire
from tensorgrid.v1 import serving_pb2
from tests.integration.conftest import Assets
from tests.integration.serving_peer import CPU, ServePeer, wait_for
from tests.integration.test_serving_peer import create_endpoint, infer, ready, rows, status

pytestmark = pytest.mark.integration


def test_another_submitter_can_neither_call_see_nor_delete_an_endpoint(
    make_grid: Callable[..., LocalGrid], digits: Assets
) -> None:
    grid = make_grid()
    grid.start_coordinator()
    peer = ServePeer(grid.target).start()
    with grid.client() as owner, grid.client(Signer.generate()) as stranger:
        endpoint = create_endpoint(owner, digits)
        wait_for(ready(owner, endpoint), what="a ready replica")
        for attempt in (
            lambda: infer(stranger, endpoint, rows(1)),
            lambda: status(stranger, endpoint),
            lambda: stranger._stub.DeleteEndpoint(
                serving_pb2.DeleteEndpointRequest(
                    endpoint_id=endpoint, signature=sign_message(stranger.signer, cancel_message(endpoint))
                ),
                metadata=stranger.session_metadata(),
            ),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                attempt()
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        listed = stranger._stub.ListEndpoints(serving_pb2.ListEndpointsRequest(), metadata=stranger.session_metadata())
        assert list(listed.endpoints) == []
        # the owner's delete must carry the owner's own signature
        with pytest.raises(grpc.RpcError) as forged:
            owner._stub.DeleteEndpoint(
                serving_pb2.DeleteEndpointRequest(
                    endpoint_id=endpoint, signature=sign_message(stranger.signer, cancel_message(endpoint))
                ),
                metadata=owner.session_metadata(),
            )
        assert forged.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert status(owner, endpoint).state == "running"

        # oversize and hostile inputs are refused before any node sees them
        before = peer.requests
        big = tensors_to_bytes({"pixels": torch.zeros(8192, 64)})  # 2 MiB > the default 1 MiB
        for data in (big, b"\xff" * 64, b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1}'):
            with pytest.raises(grpc.RpcError) as bad:
                infer(owner, endpoint, data)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert peer.requests == before
    peer.stop()


@pytest.mark.parametrize("behaviour", ["forge", "digest"])
def test_a_receipt_that_is_forged_or_does_not_match_is_not_paid(
    make_grid: Callable[..., LocalGrid], digits: Assets, behaviour: str
) -> None:
    grid = make_grid()
    grid.start_coordinator()
    cheat = ServePeer(grid.target, behaviour=behaviour).start()
    with grid.client() as c:
        endpoint = create_endpoint(c, digits)
        wait_for(ready(c, endpoint), what="a ready replica")
        for i in range(3):
            assert bytes(infer(c, endpoint, rows(i)).output) == rows(i)
        honest = ServePeer(grid.target).start()
        cheat.stop()
        wait_for(lambda: any(r.node == honest.address for r in status(c, endpoint).replicas), what="a new replica")
        wait_for(ready(c, endpoint), what="the new replica ready")
        infer(c, endpoint, rows(7))
        # the honest node's receipt is paid: the cheat's three never were
        served = wait_for(lambda: sum(r.served for r in status(c, endpoint).replicas), what="a paid request")
        assert served == 1
    honest.stop()


def test_replies_to_requests_never_sent_are_refused_and_the_stream_closed(
    make_grid: Callable[..., LocalGrid], digits: Assets
) -> None:
    grid = make_grid()
    grid.start_coordinator()
    phantom = ServePeer(grid.target, behaviour="phantom").start()
    with grid.client() as c:
        endpoint = create_endpoint(c, digits, request_timeout_ms=300)
        wait_for(ready(c, endpoint), what="a ready replica")
        with pytest.raises(grpc.RpcError) as lost:
            infer(c, endpoint, rows(1))  # the phantom answer reaches nobody
        assert lost.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        wait_for(phantom.ended.is_set, what="the coordinator closing the phantom's stream")
        assert sum(r.served for r in status(c, endpoint).replicas) == 0
    phantom.stop()


def test_the_serve_port_takes_a_stream_only_with_a_nodes_session_and_refuses_oversize_frames(
    make_grid: Callable[..., LocalGrid],
) -> None:
    """The serve port (api.serve_port) on a real coordinator: a made-up or another service's
    token is refused, a registered node's stream is its own, an oversize frame ends it."""
    grid = make_grid()
    grid.start_coordinator()
    host = "127.0.0.1"

    async def scenario() -> None:
        node = NodeClient(grid.target, Signer.generate())
        try:
            await node.register(CPU)
            port = node.serve_ports[node.target]
            assert port > 0

            async def opened(token: str, *frames: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(wire.greeting(token) + b"".join(frames))
                await writer.drain()
                return reader, writer

            async def status(reader: asyncio.StreamReader) -> grpc.StatusCode:
                while True:
                    got = await asyncio.wait_for(wire.read_frame(reader), 10)
                    assert got is not None, "closed without a status"
                    if got[0] == wire.STATUS:
                        return wire.parse_status(got[1])[0]

            hello = wire.frame(
                wire.MESSAGE,
                serving_pb2.ServeUp(hello=serving_pb2.ServeHello(max_replicas=1)).SerializeToString(),
            )
            with grid.client() as submitter:  # a submitter's session is no node's
                for token in ("made-up", submitter.session_metadata()[0][1]):
                    reader, writer = await opened(token, hello)
                    assert await status(reader) == grpc.StatusCode.UNAUTHENTICATED
                    writer.close()
            # the node's own token opens its stream (it stays open: nothing to end it)
            reader, writer = await opened(node.token, hello)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(wire.read_frame(reader), 0.5)
            # a frame claiming more than gRPC's message limit ends it unread
            writer.write(struct.pack(">BI", wire.MESSAGE, wire.MAX_FRAME_BYTES + 1))
            await writer.drain()
            assert await status(reader) == grpc.StatusCode.INVALID_ARGUMENT
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
        finally:
            await node.close()

    asyncio.run(scenario())
    assert "frame of 8388609 bytes exceeds" in grid.coordinator().log_tail(200)
