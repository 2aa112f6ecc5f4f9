"""Prometheus metrics of one node daemon, served with --metrics-listen (off by default).

Counted as things happen, in memory (one increment each, nothing on a task's path that waits):
- tasks run, by kind and outcome: ok (the worker returned a result), timeout, refused (the
  node would not run it: invalid or unsafe input, a blob it could not fetch, or a lease it gave
  back) and failed (anything else: out of memory, an execution error, a crashed worker); the
  worker's seconds per task by kind (a histogram);
- results handed in, by the coordinator's answer (accepted, rejected, dropped unanswered) and
  audit checks answered: a training result's checkpoints revealed when its audit asked. A
  spot-check or a canary is leased like any task and the node cannot tell it from one (that is
  the point of them): it counts among the tasks;
- blob bytes downloaded (task inputs fetched into the cache) and uploaded (results and
  revealed checkpoints); endpoint requests served by outcome (answered, failed).

Read at each scrape: this daemon's CPU seconds, its live task and serving workers' (its
children, or forked for it by a zygote; a gauge, since a replaced worker takes its seconds with
it), their resident memory
with the daemon's, the machine's CPU use in percent since the previous scrape,
and on a CUDA node each GPU's utilisation and memory through NVML (pynvml) when it is
installed; without it, only the daemon's own torch.cuda allocated/reserved bytes (its
workers', which do the work, are not visible to it) and tensorgrid_node_gpu_utilization_available
0. A CPU node never imports torch for this.

Earnings: the credited wei the coordinator reports for this node (GetEarnings, public), polled
by a background thread every EARNINGS_POLL_S and at a scrape no more often than every
EARNINGS_MIN_S, never on a task's path; a failed poll is counted, not raised, and the gauge
keeps its last value. (Prometheus values are float64: exact up to 2**53 wei, about 0.009 ETH,
then to 16 significant digits; `tensorgrid-node earnings` prints the exact integer.)

No job id, task id, blob hash or address is a label (the coordinator's metrics keep the same
rule): the endpoint tells a scraper how busy this machine is, nothing about whose work it
runs. The node's own address is not shown either: a scraper that needs it has `tensorgrid-node
address`. It has no authentication: bind it to loopback or a private address.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tensorgrid.sandbox import launch
from tensorgrid.sandbox.forked import live_children
from tensorgrid.scrape import ScrapeEndpoint
from tensorgrid.types import ErrorKind

log = logging.getLogger("tensorgrid.node")
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
EARNINGS_POLL_S = 60.0
EARNINGS_MIN_S = 10.0
# what the node would not run, as opposed to what failed while running
REFUSED = frozenset({ErrorKind.INVALID_INPUT, ErrorKind.UNSAFE_INPUT, ErrorKind.BLOB_UNAVAILABLE, ErrorKind.RELEASED})


def outcome_of(error: ErrorKind | None) -> str:
    """A task's outcome label: ok, timeout, refused or failed."""
    if error is None:
        return "ok"
    if error == ErrorKind.TIMEOUT:
        return "timeout"
    return "refused" if error in REFUSED else "failed"


class NodeMetrics:
    """The node's registry (its own: tests run several nodes' metrics in one process)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.tasks = Counter("tensorgrid_node_tasks", "tasks run, by kind and outcome", ("kind", "outcome"), registry=r)
        self.task_seconds = Histogram(
            "tensorgrid_node_task_seconds", "a task's run in its worker", ("kind",), buckets=TASK_BUCKETS, registry=r
        )
        self.results = Counter(
            "tensorgrid_node_results", "results handed in, by the coordinator's answer", ("answer",), registry=r
        )  # answer: accepted | rejected | dropped
        self.audits = Counter("tensorgrid_node_audit_reveals", "checkpoints revealed for audit checks", registry=r)
        self.blob_bytes = Counter(
            "tensorgrid_node_blob_bytes", "blob bytes moved", ("direction",), registry=r
        )  # direction: downloaded | uploaded
        self._down, self._up = self.blob_bytes.labels("downloaded"), self.blob_bytes.labels("uploaded")
        serve = Counter("tensorgrid_node_serve_requests", "endpoint requests by outcome", ("outcome",), registry=r)
        self._answered, self._serve_failed = serve.labels("answered"), serve.labels("failed")
        self.earnings = EarningsPoller(r)
        self._endpoint: ScrapeEndpoint | None = None

    def task(self, kind: str, error: ErrorKind | None, seconds: float) -> None:
        self.tasks.labels(kind, outcome_of(error)).inc()
        if error is None:
            self.task_seconds.labels(kind).observe(seconds)

    def result(self, answer: str) -> None:
        self.results.labels(answer).inc()

    def downloaded(self, n: int) -> None:
        self._down.inc(n)

    def uploaded(self, n: int) -> None:
        self._up.inc(n)

    def served(self, ok: bool) -> None:
        (self._answered if ok else self._serve_failed).inc()

    def watch_machine(self, device_kind: str) -> None:
        """Read CPU, memory (and on a CUDA node, the GPUs) at each scrape."""
        self.registry.register(MachineCollector(device_kind))

    def serve(self, listen: str) -> int:
        """Serve /metrics on host:port (0: any free port) in a thread; returns the port."""
        self._endpoint = ScrapeEndpoint(self.registry, listen)
        return self._endpoint.port

    def stop(self) -> None:
        self.earnings.stop()
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None


class EarningsPoller(Collector):
    """The credited wei the coordinator reports, polled off the task path; failures counted."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch: Callable[[], Any] | None = None
        self._clock = clock
        self._lock = threading.Lock()  # one poll at a time (the poller thread and a scrape)
        self._stopped = threading.Event()
        self.wei: int | None = None
        self.pending_wei: int | None = None
        self.failures = 0
        self.polls = 0
        self._last = -float("inf")
        registry.register(self)

    def start(self, fetch: Callable[[], Any], every_s: float = EARNINGS_POLL_S) -> None:
        """Poll `fetch()` (an Earnings: cumulative_wei, pending_wei) now and every `every_s` on a daemon thread."""
        self._fetch = fetch
        threading.Thread(target=self._loop, args=(every_s,), name="earnings-poll", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self, every_s: float) -> None:
        while not self._stopped.is_set():
            self.poll(force=True)
            self._stopped.wait(every_s)

    def poll(self, force: bool = False) -> None:
        """Ask the coordinator unless the last poll is under EARNINGS_MIN_S old (force: the timer's poll)."""
        if self._fetch is None or not self._lock.acquire(blocking=False):
            return  # a poll is under way: its answer will do
        try:
            if not force and self._clock() - self._last < EARNINGS_MIN_S:
                return
            self._last = self._clock()
            self.polls += 1
            try:
                earned = self._fetch()
                self.wei, self.pending_wei = int(earned.cumulative_wei), int(earned.pending_wei)
            except Exception as e:  # the coordinator away, a timeout: the metrics say so, the node goes on
                self.failures += 1
                log.debug("earnings poll failed: %s", e)
        finally:
            self._lock.release()

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        self.poll()
        if self.wei is not None:
            earned = GaugeMetricFamily(
                "tensorgrid_node_earned_wei", "wei the coordinator has credited this node (posted or not)"
            )
            earned.add_metric([], self.wei)
            yield earned
            unposted = GaugeMetricFamily("tensorgrid_node_unposted_wei", "credited wei not yet posted on chain")
            unposted.add_metric([], self.pending_wei or 0)
            yield unposted
        failed = CounterMetricFamily("tensorgrid_node_earnings_poll_failures", "earnings queries that failed")
        failed.add_metric([], self.failures)
        yield failed


class MachineCollector(Collector):
    """CPU and memory of this daemon and its workers, the machine's CPU use, and the GPUs."""

    def __init__(self, device_kind: str) -> None:
        self._me = psutil.Process()
        self._gpus = GpuReader() if device_kind == "cuda" else None
        psutil.cpu_percent(None)  # the first call only starts the interval

    def _processes(self) -> list[psutil.Process]:
        """The daemon and its workers: its children, and those a zygote forked for it (not its
        children); a zygote is no worker (its own start, torch's import, is not a task's)."""
        found = {self._me.pid: self._me}
        with contextlib.suppress(psutil.Error):
            found.update((p.pid, p) for p in self._me.children(recursive=True))
        for pid in live_children():
            with contextlib.suppress(psutil.Error):
                found.setdefault(pid, psutil.Process(pid))
        own = launch.own_zygote()
        if own is not None:
            found.pop(own.pid, None)
        return list(found.values())

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        own, workers, rss = 0.0, 0.0, 0
        for proc in self._processes():
            with contextlib.suppress(psutil.Error):  # a worker may exit between listing and reading
                with proc.oneshot():
                    times = proc.cpu_times()
                    if proc.pid == self._me.pid:
                        own = times.user + times.system
                    else:
                        workers += times.user + times.system
                    rss += proc.memory_info().rss
        seconds = CounterMetricFamily("tensorgrid_node_process_cpu_seconds", "CPU seconds of the daemon process")
        seconds.add_metric([], own)
        yield seconds
        # a gauge: a worker killed (over its limits, a timeout) and replaced takes its seconds with it
        busy = GaugeMetricFamily(
            "tensorgrid_node_worker_cpu_seconds", "CPU seconds of the live task and serving workers"
        )
        busy.add_metric([], workers)
        yield busy
        resident = GaugeMetricFamily(
            "tensorgrid_node_resident_memory_bytes", "resident memory of the daemon and its workers"
        )
        resident.add_metric([], rss)
        yield resident
        machine = GaugeMetricFamily(
            "tensorgrid_node_machine_cpu_percent", "the whole machine's CPU use since the previous scrape (0-100)"
        )
        machine.add_metric([], psutil.cpu_percent(None))
        yield machine
        if self._gpus is not None:
            yield from self._gpus.collect()


class GpuReader:
    """GPU utilisation and memory through NVML when pynvml is installed, else torch.cuda's own counts."""

    def __init__(self) -> None:
        self._nvml: Any = None
        try:
            # optional, never declared (nvidia-ml-py comes with a CUDA machine's drivers' tools)
            pynvml = importlib.import_module("pynvml")
            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as e:  # absent, or no driver: say what is missing, once
            log.info("GPU utilisation unavailable in metrics (pynvml: %s); exporting torch.cuda memory only", e)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        available = GaugeMetricFamily(
            "tensorgrid_node_gpu_utilization_available", "1 if GPU utilisation is read (pynvml), else 0"
        )
        available.add_metric([], 1 if self._nvml is not None else 0)
        yield available
        try:
            yield from self._nvml_metrics() if self._nvml is not None else self._torch_metrics()
        except Exception as e:  # a scrape never fails the daemon
            log.debug("reading the GPUs failed: %s", e)

    def _nvml_metrics(self) -> Iterator[GaugeMetricFamily]:
        nv = self._nvml
        use = GaugeMetricFamily("tensorgrid_node_gpu_utilization_percent", "GPU busy time (NVML)", labels=("gpu",))
        used = GaugeMetricFamily("tensorgrid_node_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=("gpu",))
        total = GaugeMetricFamily("tensorgrid_node_gpu_memory_total_bytes", "GPU memory (NVML)", labels=("gpu",))
        for i in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(i)
            memory = nv.nvmlDeviceGetMemoryInfo(handle)
            use.add_metric([str(i)], nv.nvmlDeviceGetUtilizationRates(handle).gpu)
            used.add_metric([str(i)], memory.used)
            total.add_metric([str(i)], memory.total)
        yield from (use, used, total)

    def _torch_metrics(self) -> Iterator[GaugeMetricFamily]:
        import torch  # a CUDA node's daemon has imported it already (node.hardware)

        allocated = GaugeMetricFamily(
            "tensorgrid_node_gpu_memory_allocated_bytes", "the daemon's torch.cuda.memory_allocated", labels=("gpu",)
        )
        reserved = GaugeMetricFamily(
            "tensorgrid_node_gpu_memory_reserved_bytes", "the daemon's torch.cuda.memory_reserved", labels=("gpu",)
        )
        for i in range(torch.cuda.device_count()):
            allocated.add_metric([str(i)], torch.cuda.memory_allocated(i))
            reserved.add_metric([str(i)], torch.cuda.memory_reserved(i))
        yield from (allocated, reserved)
