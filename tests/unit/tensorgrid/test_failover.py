"""Several coordinator addresses: parsed in order, sticky, moved on once per failure of the current one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tensorgrid.crypto import Signer
from tensorgrid.devnet import free_port
from tensorgrid.errors import TensorGridError
from tensorgrid.failover import FailoverChannel, Targets, parse_targets
from tensorgrid.nodeclient import NodeClient


def test_addresses_are_parsed_in_order() -> None:
    assert parse_targets(" a:1, b:2 ,a:1,") == ["a:1", "b:2"]
    assert parse_targets("a:1") == ["a:1"]
    with pytest.raises(TensorGridError, match="no coordinator address"):
        parse_targets(" , ")


def test_a_burst_of_failures_moves_on_once() -> None:
    t = Targets("a:1,b:2,c:3")
    seen = t.generation
    assert t.move_on(seen) and t.current == "b:2"
    assert not t.move_on(seen)  # a call that failed on a:1 too: already moved
    assert t.move_on(t.generation) and t.move_on(t.generation) and t.current == "a:1"  # wraps around
    single = Targets("a:1")
    assert not single.move_on(single.generation) and single.current == "a:1"


@pytest.fixture
def live() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_a_unary_call_goes_on_to_the_replica_that_answers_and_stays(live: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with FailoverChannel(f"{dead},{live}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert channel.targets.current == live
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert channel.targets.current == live  # sticky


def test_a_unary_call_under_way_when_another_call_moved_the_channel_is_sent_again(live: str) -> None:
    """A replica dies: a stream over it (the SDK's InferStream) fails first and moves the channel,
    then a unary call sent over the dead replica before that fails too. It is sent again over the
    replica now current, not raised (before: raised, its failure moving nothing)."""
    dead = f"127.0.0.1:{free_port()}"

    class Raced(FailoverChannel):
        stale: tuple[grpc.Channel, int] | None = None

        def channel(self) -> tuple[grpc.Channel, int]:
            if self.stale is not None:  # the call started before the move: the dead replica's channel
                stale, self.stale = self.stale, None
                return stale
            return super().channel()

    with Raced(f"{dead},{live}") as channel:
        channel.stale = channel.channel()  # current: dead, generation 0
        assert channel.targets.move_on(0) and channel.targets.current == live  # the stream's failure
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert channel.targets.current == live  # moved once, by the stream


def test_a_stream_that_fails_moves_the_channel_and_raises(live: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with FailoverChannel(f"{dead},{live}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            next(iter(stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)))
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert channel.targets.current == live  # the caller's retry goes there
        first = next(iter(stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)))
        assert first.status == health_pb2.HealthCheckResponse.SERVING


def test_a_node_client_moves_to_the_next_replica_when_one_is_unavailable(live: str) -> None:
    dead = f"127.0.0.1:{free_port()}"

    async def scenario() -> tuple[grpc.StatusCode, str, grpc.StatusCode]:
        client = NodeClient(f"{dead},{live}", Signer.generate(), timeout=5)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as first:
                await client.heartbeat([])
            moved_to = client.target
            with pytest.raises(grpc.aio.AioRpcError) as second:  # the caller retries: a server answers
                await client.heartbeat([])
            return first.value.code(), moved_to, second.value.code()
        finally:
            await client.close()

    first, moved_to, second = asyncio.run(scenario())
    assert first == grpc.StatusCode.UNAVAILABLE and moved_to == live
    assert second == grpc.StatusCode.UNIMPLEMENTED  # the live server (it has no NodeService), not the dead one
