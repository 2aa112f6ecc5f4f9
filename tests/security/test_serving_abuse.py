"""Abuse of endpoints over real gRPC: strangers, forged or mismatched receipts, oversize
requests, and replies to requests a node was never sent."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
import torch

from tensorgrid.crypto import Signer, cancel_message, sign_message
from tensorgrid.localgrid import LocalGrid
from tensorgrid.serving import tensors_to_bytes
from tensorgrid.v1 import serving_pb2
from tests.integration.conftest import Assets
from tests.integration.serving_peer import ServePeer, wait_for
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
