"""api.server: the services are added as generic handlers only (no registered methods, which cost
grpc.aio's serving loop a wait over one task per method after every call), and every method of
every service is still served through them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.api.server import SERVICE_NAMES, GenericOnly, build_server
from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from tensorgrid.v1 import node_pb2, node_pb2_grpc, submit_pb2


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_generic_only_keeps_the_generic_handler_of_a_generated_registration() -> None:
    added: list[grpc.GenericRpcHandler] = []

    class Server:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            added.extend(handlers)

        def add_registered_method_handlers(self, service_name: str, handlers: Any) -> None:
            raise AssertionError(f"registered methods of {service_name} reached the server")

    node_pb2_grpc.add_NodeServiceServicer_to_server(node_pb2_grpc.NodeServiceServicer(), GenericOnly(Server()))
    (handler,) = added
    service = node_pb2.DESCRIPTOR.services_by_name["NodeService"]
    for method in service.methods:
        assert handler.service(_Details(f"/{service.full_name}/{method.name}")) is not None, method.name


def test_the_coordinators_server_registers_no_method_and_serves_every_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Any, service_name: str, handlers: Any) -> None:
        raise AssertionError(f"registered methods of {service_name} reached the server")

    monkeypatch.setattr(grpc.aio._server.Server, "add_registered_method_handlers", refuse)
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=f"sqlite:///{tmp_path / 'c.db'}"))

    async def main() -> None:
        server, port, _ = await build_server(app, "127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                for name in SERVICE_NAMES:
                    answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
                    assert answer.status == health_pb2.HealthCheckResponse.SERVING
                # a method of each service answers (an unauthenticated call is refused by the
                # session check, not as an unknown method)
                for path, request in (
                    ("/tensorgrid.v1.NodeService/LeaseTasks", node_pb2.LeaseRequest()),
                    ("/tensorgrid.v1.SubmitterService/ListJobs", submit_pb2.ListJobsRequest()),
                ):
                    call = channel.unary_unary(path, request_serializer=type(request).SerializeToString)
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await call(request)
                    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, path
        finally:
            await server.stop(0)
            await app.stop()

    asyncio.run(main())
