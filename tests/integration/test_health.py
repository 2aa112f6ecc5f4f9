"""gRPC health of a real coordinator on a real PostgreSQL: SERVING while the database answers,
NOT_SERVING while it refuses connections and again SERVING once it is back, and NOT_SERVING
from the moment a shutdown begins (for --drain-s) while calls are still answered."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tensorgrid.localgrid import LocalGrid

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def _status(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status  # type: ignore[no-any-return]


def _until(target: str, wanted: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (status := _status(target)) != wanted:
        assert time.monotonic() < deadline, f"health stayed {status}, wanted {wanted}"
        time.sleep(0.1)


def _connections(admin_url: str, database: str, allowed: bool) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:  # and drop the coordinator's pooled connections
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))


def test_health_follows_the_database_and_a_shutdown(
    make_grid: Callable[..., LocalGrid], pg_server: str, pg_url: str
) -> None:
    grid = make_grid("--health-interval-ms", "200", "--drain-s", "5")
    coordinator = grid.start_coordinator(database_url=pg_url, timeout=120)
    _until(grid.target, SERVING)
    database = pg_url.rsplit("/", 1)[1]
    _connections(pg_server, database, allowed=False)
    try:
        _until(grid.target, NOT_SERVING)
    finally:
        _connections(pg_server, database, allowed=True)
    _until(grid.target, SERVING)
    coordinator.popen.send_signal(signal.SIGTERM)
    _until(grid.target, NOT_SERVING, timeout=4)  # still answering, but saying: send work elsewhere
    assert coordinator.popen.wait(30) == 0
