"""`tensorgrid-coordinator run`: the coordinator serving, from start-up to a drained stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from coordinator.api.bulk import open_bulk_port
from coordinator.api.server import Sessions, build_server, make_sessions
from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from coordinator.services.collector import keep_old_objects_frozen
from coordinator.services.serving.datalink import DataPort
from tensorgrid import sched
from tensorgrid.sandbox.confine import forbid_inspection
from tensorgrid.serving import trace

if TYPE_CHECKING:
    from coordinator.api.dashboard import Dashboard

log = logging.getLogger("tensorgrid.coordinator")
# How long the event loop may wait for the GIL while a work thread (database, the referee's
# files) runs Python: Python's default is 5 ms, which a serving answer waiting on the loop paid
# at its p99. Shorter only costs more GIL hand-offs while two threads both want it.
SWITCH_INTERVAL_S = 0.0005


async def start_dashboard(app: Coordinator, sessions: Sessions) -> Dashboard:
    """The read-only web dashboard on --dashboard-listen (aiohttp loads only when it is on)."""
    from coordinator.api.dashboard import Views, open_dashboard
    from coordinator.services.dashboard import DashboardData

    c = app.config
    stakes = app.verification.stakes
    stake_of = stakes.known if stakes is not None else None
    data = DashboardData(app.store, app.reports, stake_of)
    views = Views(app.runtime, app.access, data, sessions.dashboards, sessions.limiter)
    return await open_dashboard(c.dashboard_listen, views, tls_cert=c.tls_cert, tls_key=c.tls_key, insecure=c.insecure)


async def open_data_port(app: Coordinator, config: CoordinatorConfig, *, tls: bool) -> DataPort | None:
    """The serving data port (--serve-data-listen), offered to inference replicas from now on.
    Never beside TLS: the link is plain TCP, and a worker cannot hold a TLS session the agent
    opened, so with TLS replicas keep to their (TLS) Serve streams."""
    if not config.serve_data_listen:
        return None
    if tls:
        log.warning("--serve-data-listen is ignored: gRPC is served over TLS and the data link is plain TCP")
        return None
    port = DataPort(app.router, max_frame_bytes=config.serve_data_max_frame_bytes)
    host, _, number = config.serve_data_listen.rpartition(":")
    app.router.data_port = await port.start(host or "127.0.0.1", int(number or 0))
    log.info("serving data port on %s:%d", host, app.router.data_port)
    return port


async def serve(
    config: CoordinatorConfig, creds: grpc.ServerCredentials | None, ready_file: Path | None = None
) -> None:
    """Serve with `creds` (coordinator.main.credentials: TLS, or None for plain text) until stopped."""
    forbid_inspection()  # a sandboxed referee must not read this process's key or secrets
    app = Coordinator(config)
    bulk = open_bulk_port(config, app.blobs, app.access.record_upload, app.metrics.moved)
    sessions = make_sessions(app)
    sched.short_slice(inherited=True)  # gRPC's threads, made with the server, carry every call too
    server, port, checks = await build_server(app, config.listen, creds, bulk, sessions)
    await server.start()
    sched.short_slice()  # what this thread starts from here on (work threads, the referee) takes the default
    if config.metrics_listen:
        app.metrics.serve(config.metrics_listen)
    data_port = await open_data_port(app, config, tls=creds is not None)
    dashboard = await start_dashboard(app, sessions) if config.dashboard_listen else None
    await app.start()
    # What start-up made lives as long as the process: out of the collector's sight, a full
    # collection stops the loop for about a millisecond instead of a hundred or more. What the
    # nodes' calls keep alive later is frozen as it ages, and swept now and then (services.collector).
    gc.freeze()
    trace.start("coordinator")
    collector = asyncio.create_task(keep_old_objects_frozen(sweep_s=config.gc_sweep_s))
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    host = config.listen.rsplit(":", 1)[0]
    log.info(
        "coordinator %s serving %s on %s:%d (db %s)",
        app.identity.address,
        "TLS" if creds is not None else "plain text",
        host,
        port,
        app.store.engine.url.render_as_string(),
    )
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    collector.cancel()
    log.info("shutting down")
    await checks.drain()
    await asyncio.sleep(config.drain_s)
    if dashboard is not None:
        await dashboard.stop()
    await server.stop(grace=3)
    if bulk is not None:
        bulk.stop()
    if data_port is not None:
        data_port.close()
    app.metrics.stop()
    await app.stop()
