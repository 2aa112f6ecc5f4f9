"""Per-endpoint request statistics, in memory: rates and latency over the last minute, totals.

Recording is O(1) (a per-second bucket and a bounded ring of latencies); percentiles are
computed only when someone asks (GetEndpoint), so the request path pays almost nothing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

WINDOW_S = 60
MAX_SAMPLES = 50_000  # latencies kept for the percentiles (the newest; ~830 requests/s for a full minute)


class RequestSink(Protocol):
    """Where every endpoint's outcomes are also counted, grid-wide (services.metrics.ServingMetrics)."""

    def answered(self, latency_ms: float) -> None: ...

    def failed(self, refused: bool) -> None: ...


class EndpointStats:
    """Requests answered, errors and refusals of one endpoint; latency over the last minute."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sink: RequestSink | None = None) -> None:
        self._clock = clock
        self._sink = sink
        self.requests = 0  # answered since creation
        self.errors = 0  # failed or refused since creation
        self.refused = 0  # of the errors: refused because every replica was full
        self._buckets: deque[list[int]] = deque()  # [second, answered] per second, oldest first
        self._latency: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)  # (time, ms)

    def answered(self, latency_ms: float) -> None:
        if self._sink is not None:
            self._sink.answered(latency_ms)
        now = self._clock()
        self.requests += 1
        self._latency.append((now, latency_ms))
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([second, 1])
            self._trim(now)

    def failed(self, refused: bool = False) -> None:
        if self._sink is not None:
            self._sink.failed(refused)
        self.errors += 1
        if refused:
            self.refused += 1

    def _trim(self, now: float) -> None:
        cutoff = now - WINDOW_S
        while self._buckets and self._buckets[0][0] < int(cutoff):
            self._buckets.popleft()
        while self._latency and self._latency[0][0] < cutoff:
            self._latency.popleft()

    def requests_per_s(self) -> float:
        """Answered requests per second over the last minute (or since the first, if sooner)."""
        now = self._clock()
        self._trim(now)
        if not self._buckets:
            return 0.0
        count = sum(n for _, n in self._buckets)
        span = max(1.0, min(float(WINDOW_S), now - self._buckets[0][0]))
        return count / span

    def percentiles(self) -> tuple[float, float]:
        """(p50, p99) of the last minute's latencies in milliseconds; (0, 0) with none."""
        self._trim(self._clock())
        if not self._latency:
            return 0.0, 0.0
        values = sorted(ms for _, ms in self._latency)
        return _pick(values, 0.50), _pick(values, 0.99)


def _pick(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]
