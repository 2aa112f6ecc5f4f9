"""Endpoints end to end: a real coordinator process, a serving peer over real gRPC (Serve),
a submitter calling Infer; saturation, failover when a node goes away, and deletion."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import torch

from tensorgrid.client import Client
from tensorgrid.crypto import cancel_message, sign_message
from tensorgrid.localgrid import LocalGrid
from tensorgrid.serving import tensors_to_bytes
from tensorgrid.spec import EndpointSpec
from tensorgrid.v1 import serving_pb2
from tests.integration.conftest import Assets
from tests.integration.serving_peer import ServePeer, wait_for

pytestmark = pytest.mark.integration


def create_endpoint(c: Client, digits: Assets, **kw: Any) -> str:
    """An endpoint of the digits model for ServePeer nodes, unchecked unless `check_rate` says:
    a peer echoes its inputs, not the model's outputs, so a sampled check (2% of answers by
    default) catches it and releases its replica about a second later, within a test that goes
    on calling it (a draw of the coordinator's secret the test does not control)."""
    kw.setdefault("check_rate", 0.0)
    model = c.upload(digits.model)
    return c.submit(EndpointSpec(model=model, **kw)).job_id


def infer(c: Client, endpoint: str, data: bytes, timeout: float = 15) -> serving_pb2.InferResponse:
    req = serving_pb2.InferRequest(endpoint_id=endpoint, input=data)
    return c._stub.Infer(req, metadata=c.session_metadata(), timeout=timeout)


def status(c: Client, endpoint: str) -> serving_pb2.EndpointStatus:
    return c._stub.GetEndpoint(serving_pb2.GetEndpointRequest(endpoint_id=endpoint), metadata=c.session_metadata())


def ready(c: Client, endpoint: str) -> Callable[[], bool]:
    return lambda: any(r.state == "ready" for r in status(c, endpoint).replicas)


def rows(i: int) -> bytes:
    return tensors_to_bytes({"pixels": torch.full((1, 64), float(i))})


def test_infer_saturation_failover_and_delete(make_grid: Callable[..., LocalGrid], digits: Assets) -> None:
    grid = make_grid()
    grid.start_coordinator()
    first = ServePeer(grid.target, behaviour="hold").start()
    with grid.client() as c:
        endpoint = create_endpoint(c, digits, max_queue=2, request_timeout_ms=20_000)
        wait_for(ready(c, endpoint), what="a ready replica")
        assert c.job(endpoint).state.value == "running"

        # saturation: the holding replica takes max_queue calls, the next is refused with a hint
        results: list[Any] = []
        held = [threading.Thread(target=lambda i=i: results.append(infer(c, endpoint, rows(i), 30))) for i in (1, 2)]
        for t in held:
            t.start()
        wait_for(lambda: first.requests == 2, what="two calls held by the replica")
        with pytest.raises(grpc.RpcError) as refused:
            infer(c, endpoint, rows(3))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(refused.value.trailing_metadata() or ())
        assert int(trailers["retry-after-ms"]) > 0

        # failover: the holding node goes away; its calls are answered by the replica placed instead
        second = ServePeer(grid.target).start()
        first.stop()
        for t in held:
            t.join(30)
        assert len(results) == 2
        assert all(r.node == second.address and r.attempts == 2 for r in results)
        assert sorted(bytes(r.output) for r in results) == sorted([rows(1), rows(2)])

        answer = infer(c, endpoint, rows(9))
        assert bytes(answer.output) == rows(9) and answer.attempts == 1
        wait_for(lambda: sum(r.served for r in status(c, endpoint).replicas) == 3, what="receipted requests")
        s = status(c, endpoint)
        assert s.state == "running" and s.requests == 3 and s.p50_ms > 0

        # delete: signed like CancelJob; the endpoint answers no more
        sig = sign_message(c.signer, cancel_message(endpoint))
        gone = c._stub.DeleteEndpoint(
            serving_pb2.DeleteEndpointRequest(endpoint_id=endpoint, signature=sig), metadata=c.session_metadata()
        )
        assert gone.state == "deleted"
        with pytest.raises(grpc.RpcError) as after:
            infer(c, endpoint, rows(4))
        assert after.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert c.job(endpoint).state.value == "cancelled"
        listed = c._stub.ListEndpoints(serving_pb2.ListEndpointsRequest(), metadata=c.session_metadata())
        assert [e.endpoint_id for e in listed.endpoints] == [endpoint]
    second.stop()
