"""Prometheus metrics of one coordinator, served with --metrics-listen (off by default).

Two kinds:
- counted as things happen, in memory: each RPC's count by method and status code and its
  latency (a histogram: LeaseTasks and SubmitSmallResult are the lease and result latencies),
  how late the event loop runs (a histogram: what a call waits before its handler starts),
  how long garbage collections stop the process (a histogram by generation),
  and blob bytes in and out by path (gRPC or the bulk port); endpoint requests by outcome
  (answered, failed, refused) and the latency of the answered ones (ServingMetrics, fed by
  every endpoint's stats: one counter increment and one histogram observation per request);
- read from the router's and the checks' plain in-memory counts at each scrape (no lock, no
  database): served batches receipted or refused, answers never receipted, sampled checks
  by outcome, and replicas by state (as of the router's last tick);
- read from the database at each scrape: tasks and jobs by state (queued tasks are the queue
  depth), the outbox by state (what still has to reach the chain) and its failed attempts (the
  chain errors), and the nodes seen within the last three idle heartbeat intervals.

Every figure is a count over the whole grid: no job id, address or hash is ever a label, so
the endpoint tells a scraper how busy the coordinator is and nothing about whose work it runs.
Serving keeps to it (no endpoint label, not even a prefix): an endpoint id names a
submitter's job, endpoints come and go (each label set lives as long as the process), and
per-endpoint figures are already in `tensorgrid endpoint status`, for its submitter only.
It has no authentication: bind it to loopback or a private address (the default is off).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine

from coordinator.db import schema as s
from tensorgrid.scrape import ScrapeEndpoint

if TYPE_CHECKING:
    from coordinator.services.serving.router import Router

log = logging.getLogger("tensorgrid.coordinator")
LOOP_PROBE_S = 0.05
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
        # How late the event loop wakes a sleeper: the wait a call's handler has before it starts
        # (the RPC histogram begins in the handler), when the loop is short of CPU.
        self.loop_lag = Histogram(
            "tensorgrid_event_loop_lag_seconds",
            f"how late the event loop ran a {LOOP_PROBE_S * 1000:.0f} ms timer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # A full collection stops every thread for as long as it walks the heap it has not been
        # told to skip (gc.freeze): with thousands of nodes connected, hundreds of milliseconds.
        self.gc_pause = Histogram(
            "tensorgrid_gc_pause_seconds",
            "how long a garbage collection stopped the process, by generation (2: a full one)",
            ("generation",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.blob_bytes = Counter(
            "tensorgrid_blob_bytes", "blob bytes moved", ("direction", "path"), registry=r
        )  # direction: in|out, path: grpc|bulk
        self.serving = ServingMetrics(r)
        self._endpoint: ScrapeEndpoint | None = None
        self._rpc_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        # The labelled children kept per (method, code): labels() takes a lock and builds keys on
        # every call, once per RPC. Both come from a bounded set (registered methods, status codes).
        children = self._rpc_children.get((method, code))
        if children is None:
            name = method.rsplit("/", 1)[-1]
            children = (self.rpcs.labels(name, code), self.rpc_seconds.labels(name))
            self._rpc_children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)

    async def watch_loop(self) -> None:
        """Time the event loop's lateness for ever (a timer every LOOP_PROBE_S)."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LOOP_PROBE_S)
            self.loop_lag.observe(max(0.0, loop.time() - before - LOOP_PROBE_S))

    async def watch_gc(self) -> None:
        """Time every garbage collection (a gc callback) until this task is cancelled."""
        children = [self.gc_pause.labels(str(generation)) for generation in range(3)]
        started = 0.0

        def timed(phase: str, info: dict[str, Any]) -> None:
            nonlocal started  # collections never overlap: one at a time, under the GIL
            if phase == "start":
                started = time.perf_counter()
            else:
                children[min(2, int(info["generation"]))].observe(time.perf_counter() - started)

        gc.callbacks.append(timed)
        try:
            await asyncio.Event().wait()
        finally:
            gc.callbacks.remove(timed)

    def moved(self, direction: str, path: str, n: int) -> None:
        """Count n blob bytes moved: direction "in" or "out", path "grpc" or "bulk"."""
        self.blob_bytes.labels(direction, path).inc(n)

    def watch_database(self, engine: Engine, live_window_ms: int, now_ms: Any) -> None:
        """Read the per-state counts from `engine` at each scrape, and count its commits (the
        coordinator's database load: PostgreSQL's own counters reach pg_stat_database seconds late)."""
        self.registry.register(_DatabaseCollector(engine, live_window_ms, now_ms))
        commits = Counter("tensorgrid_database_commits", "database transactions committed", registry=self.registry)
        event.listen(engine, "commit", lambda _conn: commits.inc())

    def watch_serving(self, router: Router) -> None:
        """Read the router's batch, check and replica counts at each scrape."""
        self.registry.register(_ServingCollector(router))

    def serve(self, listen: str) -> int:
        """Serve /metrics on host:port (0: any free port) in a thread; returns the port."""
        self._endpoint = ScrapeEndpoint(self.registry, listen)
        return self._endpoint.port

    def stop(self) -> None:
        if self._endpoint is not None:
            self._endpoint.stop(wait=False)  # called on the event loop
            self._endpoint = None


class ServingMetrics:
    """Endpoint requests over the whole grid (serving.stats.RequestSink): outcomes and latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        requests = Counter(
            "tensorgrid_serve_requests", "endpoint requests by outcome", ("outcome",), registry=registry
        )  # outcome: answered | failed (the model, a deadline, a bad input) | refused (every replica full)
        # the children bound once: a request pays an increment, not a label lookup
        self._answered, self._failed, self._refused = (requests.labels(o) for o in ("answered", "failed", "refused"))
        self._seconds = Histogram(
            "tensorgrid_serve_request_seconds",
            "time from an endpoint call's arrival to its answer (answered requests)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def answered(self, latency_ms: float) -> None:
        self._answered.inc()
        self._seconds.observe(latency_ms / 1000)

    def failed(self, refused: bool) -> None:
        (self._refused if refused else self._failed).inc()


class _ServingCollector(Collector):
    """The router's and the checks' running totals, read at scrape time (plain ints and one
    dict the router replaces whole at each tick: nothing to lock)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        r = self.router
        batches = CounterMetricFamily(
            "tensorgrid_serve_batches", "served micro-batches by receipt (refused: not paid)", labels=("outcome",)
        )
        batches.add_metric(["receipted"], r.receipted)
        batches.add_metric(["refused"], r.mismatches)
        yield batches
        unpaid = CounterMetricFamily("tensorgrid_serve_unreceipted_answers", "answers whose receipt never came")
        unpaid.add_metric([], r.unpaid)
        yield unpaid
        checks = CounterMetricFamily(
            "tensorgrid_serve_checks",
            "sampled checks: verified (the answering node), caught (nodes: answering or checking), "
            "unverified (no verdict), dropped (too many waiting)",
            labels=("outcome",),
        )
        for outcome in ("verified", "caught", "unverified", "dropped"):
            checks.add_metric([outcome], int(getattr(r.checks, outcome, 0)))
        yield checks
        replicas = GaugeMetricFamily("tensorgrid_serve_replicas", "endpoint replicas by state", labels=("state",))
        counts = r.replica_counts
        for state, name in (("ready", "ready"), ("assigned", "warming"), ("draining", "draining")):
            replicas.add_metric([name], counts.get(state, 0))
        yield replicas


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
        nodes = GaugeMetricFamily("tensorgrid_live_nodes", "nodes heard from within three idle heartbeat intervals")
        nodes.add_metric([], int(live))
        yield nodes
        errors = GaugeMetricFamily("tensorgrid_chain_errors", "failed attempts of the chain transactions in the outbox")
        errors.add_metric([], int(chain_errors))
        yield errors
