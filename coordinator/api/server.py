"""Build the grpc.aio server: both services, health checking and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator.api.auth import SessionCache, SessionInterceptor
from coordinator.api.grid import Grid
from coordinator.api.limits import LimitsInterceptor
from coordinator.api.node_service import NodeServicer
from coordinator.api.submit_service import SubmitterServicer
from tensorgrid.rpc import server_options
from tensorgrid.v1 import node_pb2, node_pb2_grpc, submit_pb2, submit_pb2_grpc

SERVICE_NAMES = (
    node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    submit_pb2.DESCRIPTOR.services_by_name["SubmitterService"].full_name,
)


async def build_server(app: Grid, listen: str) -> tuple[grpc.aio.Server, int]:
    """Returns the server (not started) and the port it bound (listen may ask for port 0)."""
    sessions = SessionCache(lambda h: app.runtime.db(app.store.nodes.session, h))
    # Sessions first: the limits then count a node's calls against its address (api.limits).
    interceptors = [SessionInterceptor(sessions), LimitsInterceptor(app.config.peers)]
    server = grpc.aio.server(interceptors=interceptors, options=server_options())
    node_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(app, sessions), server)
    submit_pb2_grpc.add_SubmitterServiceServicer_to_server(SubmitterServicer(app), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*SERVICE_NAMES, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"could not listen on {listen}")
    return server, port
