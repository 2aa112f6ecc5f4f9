"""Prometheus metrics of one coordinator, served with --metrics-listen (off by default).

Two kinds:
- counted as things happen, in memory: each RPC's count by method and status code and its
  latency (a histogram: LeaseTasks and SubmitSmallResult are the lease and result latencies),
  and blob bytes in and out by path (gRPC or the bulk port);
- read from the database at each scrape: tasks and jobs by state (queued tasks are the queue
  depth), the outbox by state (what still has to reach the chain) and its failed attempts (the
  chain errors), and the nodes seen within the last three heartbeats.

Every figure is a count over the whole grid: no job id, address or hash is ever a label, so
the endpoint tells a scraper how busy the coordinator is and nothing about whose work it runs.
It has no authentication: bind it to loopback or a private address (the default is off).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from coordinator.db import schema as s

log = logging.getLogger("tensorgrid.coordinator")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)


class Metrics:
    """The coordinator's registry (its own, so several coordinators can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpcs = Counter("tensorgrid_rpcs", "gRPC calls handled", ("method", "code"), registry=r)
        self.rpc_seconds = Histogram(
            "tensorgrid_rpc_seconds", "time to handle a gRPC call", ("method",), buckets=LATENCY_BUCKETS, registry=r
        )
        self.blob_bytes = Counter(
            "tensorgrid_blob_bytes", "blob bytes moved", ("direction", "path"), registry=r
        )  # direction: in|out, path: grpc|bulk
        self._server: Any = None

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        name = method.rsplit("/", 1)[-1]
        self.rpcs.labels(name, code).inc()
        self.rpc_seconds.labels(name).observe(seconds)

    def moved(self, direction: str, path: str, n: int) -> None:
        """Count n blob bytes moved: direction "in" or "out", path "grpc" or "bulk"."""
        self.blob_bytes.labels(direction, path).inc(n)

    def watch_database(self, engine: Engine, live_window_ms: int, now_ms: Any) -> None:
        """Read the per-state counts from `engine` at each scrape."""
        self.registry.register(_DatabaseCollector(engine, live_window_ms, now_ms))

    def serve(self, listen: str) -> int:
        """Serve /metrics on host:port (0: any free port) in a thread; returns the port."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        self._server = server
        bound = int(server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        if self._server is not None:
            threading.Thread(target=self._server.shutdown, daemon=True).start()
            self._server = None


class _DatabaseCollector(Collector):
    def __init__(self, engine: Engine, live_window_ms: int, now_ms: Any) -> None:
        self.engine = engine
        self.live_window_ms = live_window_ms
        self.now_ms = now_ms

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.engine.connect() as conn:
                counts: dict[str, dict[Any, Any]] = {
                    name: dict(conn.execute(select(t.c.state, func.count()).group_by(t.c.state)).all())
                    for name, t in (("tasks", s.tasks), ("jobs", s.jobs), ("outbox", s.outbox))
                }
                since = self.now_ms() - self.live_window_ms
                live = conn.execute(select(func.count()).where(s.nodes.c.last_seen_ms >= since)).scalar_one()
                chain_errors = conn.execute(select(func.coalesce(func.sum(s.outbox.c.attempts), 0))).scalar_one()
        except Exception:  # a scrape must not fail the coordinator; say so instead
            log.exception("metrics: reading the database failed")
            up = GaugeMetricFamily("tensorgrid_database_up", "whether the last scrape could read the database")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("tensorgrid_database_up", "whether the last scrape could read the database")
        up.add_metric([], 1)
        yield up
        for name, helptext in (
            ("tasks", "tasks by state (queued: the queue depth)"),
            ("jobs", "jobs by state"),
            ("outbox", "chain transactions by state (pending: still to reach the chain)"),
        ):
            family = GaugeMetricFamily(f"tensorgrid_{name}", helptext, labels=("state",))
            for state, n in sorted(counts[name].items()):
                family.add_metric([str(state)], int(n))
            yield family
        nodes = GaugeMetricFamily("tensorgrid_live_nodes", "nodes heard from within the last three heartbeats")
        nodes.add_metric([], int(live))
        yield nodes
        errors = GaugeMetricFamily("tensorgrid_chain_errors", "failed attempts of the chain transactions in the outbox")
        errors.add_metric([], int(chain_errors))
        yield errors
