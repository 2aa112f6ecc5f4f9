"""The simulated fleet's client processes (benchmarks._fleet), driven by benchmarks.fleet:
commands on their stdin, JSON answers on their stdout; and what their reports add up to."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil

from benchmarks._common import cpu_seconds
from benchmarks._pg import backend_cpu_s


class FleetProcess:
    """A `python -m benchmarks._fleet` child: commands on its stdin, JSON answers on its stdout."""

    def __init__(self, *args: str, nice: int = 0) -> None:
        command = [sys.executable, "-m", "benchmarks._fleet", *args]
        if nice:
            command = ["nice", "-n", str(nice), *command]
        self.popen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, command: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(command + "\n")
        self.popen.stdin.flush()

    def answer(self) -> dict[str, Any]:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError(f"simulated fleet exited with {self.popen.wait()}")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.popen.poll() is None:
            self.send("stop")
            try:
                self.popen.wait(60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@contextmanager
def fleet_process(*args: str, nice: int = 0) -> Iterator[FleetProcess]:
    proc = FleetProcess(*args, nice=nice)
    try:
        yield proc
    finally:
        proc.close()


def rss(pids: list[int]) -> int:
    return sum(psutil.Process(p).memory_info().rss for p in pids)


def percentiles(samples: list[float]) -> dict[str, float | int | None]:
    if len(samples) < 2:
        return {"p50_ms": None, "p99_ms": None, "samples": len(samples)}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49], 2), "p99_ms": round(cuts[98], 2), "samples": len(samples)}


def ask_all(fleets: list[FleetProcess], command: str) -> list[dict[str, Any]]:
    for f in fleets:
        f.send(command)
    return [f.answer() for f in fleets] if command == "report" else []


def heartbeat_rate(reports: list[dict[str, Any]], since: float, until: float) -> dict[str, float | None]:
    """The simulated nodes' heartbeats per second over the whole seconds between two monotonic
    times: the mean, and the busiest second (heartbeats bunched in a few seconds held the leases
    of those seconds up: tensorgrid.heartbeats)."""
    offset = time.time() - time.monotonic()
    first, last = int(since + offset) + 1, int(until + offset)
    counts = [sum(int(r["beats"].get(str(s), 0)) for r in reports) for s in range(first, last)]
    if not counts:
        return {"mean": None, "max": None}
    return {"mean": round(sum(counts) / len(counts), 1), "max": max(counts)}


def phase_cpu(pids: list[int], fleets: list[FleetProcess], db: str) -> dict[str, float]:
    """CPU seconds so far of the coordinators, the simulated nodes' processes and the database's backends."""
    return {
        "coordinator": sum(cpu_seconds(p) or 0.0 for p in pids),
        "nodes": sum(cpu_seconds(f.popen.pid) or 0.0 for f in fleets),
        "postgres": backend_cpu_s(db),
    }


def worst_lag(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The simulated nodes' event-loop lag (of the most lagging process): added to every latency they measure."""
    return max((r["loop_lag_ms"] for r in reports), key=lambda lag: lag["p99"] or 0.0)


def merge_errors(reports: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reports:
        for k, v in r["errors"].items():
            out[k] = out.get(k, 0) + v
    return out
