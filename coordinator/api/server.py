"""Build the grpc.aio server: both services, health checking and reflection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from coordinator.api.auth import FailureLimiter, SessionCache, SessionInterceptor
from coordinator.api.bulk import BulkPort
from coordinator.api.grid import Grid
from coordinator.api.health import Health
from coordinator.api.limits import LimitsInterceptor
from coordinator.api.node_service import NodeServicer
from coordinator.api.reflection import enable_reflection
from coordinator.api.submit_service import SubmitterServicer
from tensorgrid.rpc import server_options
from tensorgrid.v1 import node_pb2, node_pb2_grpc, submit_pb2, submit_pb2_grpc

log = logging.getLogger("tensorgrid.coordinator")
SERVICE_NAMES = (
    node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    submit_pb2.DESCRIPTOR.services_by_name["SubmitterService"].full_name,
)


@dataclass(frozen=True)
class Sessions:
    """The session caches and the failed-authentication limiter, shared by everything that takes
    a session token (both gRPC services, and the dashboard's HTTP API). `dashboards` holds the
    read-only dashboard sessions: only the dashboard reads it, never the gRPC services."""

    nodes: SessionCache
    submitters: SessionCache
    dashboards: SessionCache
    limiter: FailureLimiter


def make_sessions(app: Grid) -> Sessions:
    limits = app.config.sessions
    db = app.runtime.db
    nodes = SessionCache(lambda h: db(app.store.nodes.session, h), unknown_ttl_ms=limits.unknown_token_ttl_ms)
    submitters = SessionCache(lambda h: db(app.store.sessions.submitter, h), unknown_ttl_ms=limits.unknown_token_ttl_ms)
    dashboards = SessionCache(lambda h: db(app.store.sessions.dashboard, h), unknown_ttl_ms=limits.unknown_token_ttl_ms)
    limiter = FailureLimiter(limits.failures_per_window, limits.failure_window_ms)
    return Sessions(nodes, submitters, dashboards, limiter)


class GenericOnly:
    """The server as the generated add_*Servicer_to_server functions see it: they add each service
    twice, as a generic handler and as registered methods; only the generic handler is kept.

    grpc.aio requests one call ahead per registered method, and its serving loop waits on all of
    those requests (asyncio.wait over one task per method, 35 here) after every call it takes: about
    20 µs a call, a few percent of a task's cost under `python -m benchmarks.dispatch`. A generic
    handler is one request for all its methods, as on the echo baseline's server. Methods,
    interceptors and answers are the same either way."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Dropped: the generic handler the same call added serves these methods."""


async def build_server(
    app: Grid,
    listen: str,
    credentials: grpc.ServerCredentials | None = None,
    bulk: BulkPort | None = None,
    sessions: Sessions | None = None,
) -> tuple[grpc.aio.Server, int, Health]:
    """Returns the server (not started), the port it bound (listen may ask for port 0) and its
    health, which follows the database from now on (api.health).
    credentials: TLS; None serves plain text (the caller applies the rule, tensorgrid.tls).
    bulk: the bulk port SubmitterService issues tickets for (None: none).
    sessions: the caches to share with the dashboard (None: the server's own)."""
    limits = app.config.sessions
    shared = sessions if sessions is not None else make_sessions(app)
    nodes, submitters, dashboards, limiter = shared.nodes, shared.submitters, shared.dashboards, shared.limiter
    # Sessions first: the limits then count a node's calls against its address (api.limits).
    interceptors = [
        SessionInterceptor(nodes, submitters, limiter),
        LimitsInterceptor(app.config.peers, app.metrics.observe_rpc),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=server_options())
    target = GenericOnly(server)
    node_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(app, nodes), target)
    submit_pb2_grpc.add_SubmitterServiceServicer_to_server(SubmitterServicer(app, submitters, dashboards, bulk), target)
    caches = (("node", nodes), ("submitter", submitters), ("dashboard", dashboards))
    app.runtime.spawn(_purge_sessions(app, caches, limits.purge_interval_ms / 1000))
    checks = Health(SERVICE_NAMES)
    health_pb2_grpc.add_HealthServicer_to_server(checks.servicer, target)
    await checks.set(True)
    app.runtime.spawn(
        checks.watch_database(lambda: app.runtime.db(app.store.ping), app.config.health_interval_ms / 1000)
    )
    enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME), target)  # v1 and v1alpha
    if credentials is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise OSError(f"could not listen on {listen}")
    return server, port, checks


async def _purge_sessions(app: Grid, caches: tuple[tuple[str, SessionCache], ...], interval_s: float) -> None:
    """Expired sessions leave the caches and the database (and expired nonces the database);
    sessions another replica dropped leave this one's caches."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            purged = await app.runtime.db(app.store.sessions.purge_expired, app.runtime.now_ms())
            evicted = sum(cache.evict_expired() for _, cache in caches)
            for kind, cache in caches:
                asked = cache.cached()
                held = await app.runtime.db_bulk(app.store.sessions.held, kind, asked)
                evicted += cache.keep_held(asked, held)
        except Exception:  # retried next interval
            log.exception("purging expired sessions failed")
            continue
        if purged or evicted:
            log.info("sessions: %d expired deleted, %d evicted from the cache", purged, evicted)
