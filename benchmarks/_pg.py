"""Database load for benchmarks: a fresh PostgreSQL database per run, the coordinator's own
count of its commits (pg_stat_database hears of them seconds late), the backends' CPU; and the
garbage collector sweeps a coordinator logged (services.collector)."""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import psycopg

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"  # the tests' server (TENSORGRID_TEST_PG)


@contextmanager
def fresh_database(admin_url: str, name: str) -> Iterator[str]:
    """CREATE DATABASE name on admin_url's server; yields its URL; drops it afterwards."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()


def scrape(port: int) -> dict[str, float]:
    """The coordinator's metrics at 127.0.0.1:port: database commits, and Heartbeat and LeaseTasks calls."""
    text = _metrics(port)
    out = {"commits": 0.0, "heartbeats": 0.0, "leases": 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == "tensorgrid_database_commits_total":
            out["commits"] += float(value)
        elif name.startswith("tensorgrid_rpcs_total{") and 'method="Heartbeat"' in name:
            out["heartbeats"] += float(value)
        elif name.startswith("tensorgrid_rpcs_total{") and 'method="LeaseTasks"' in name:
            out["leases"] += float(value)
    return out


def histograms(port: int) -> dict[str, dict[float, float]]:
    """The coordinator's own histograms of LeaseTasks latency (time in the handler, as it
    measures it), of its event loop's lag and of its full garbage collections' pauses ("lease",
    "loop", "gc2"): calls, probes or collections so far at or under each bucket's bound, in seconds."""
    out: dict[str, dict[float, float]] = {"lease": {}, "loop": {}, "gc2": {}}
    for line in _metrics(port).splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("tensorgrid_rpc_seconds_bucket{") and 'method="LeaseTasks"' in name:
            which = "lease"
        elif name.startswith("tensorgrid_event_loop_lag_seconds_bucket{"):
            which = "loop"
        elif name.startswith("tensorgrid_gc_pause_seconds_bucket{") and 'generation="2"' in name:
            which = "gc2"
        else:
            continue
        out[which][float(name.split('le="', 1)[1].split('"', 1)[0])] = float(value)
    return out


def bucket_summary(before: list[dict[float, float]], after: list[dict[float, float]], goal_s: float) -> dict[str, Any]:
    """Over all replicas, what one histogram counted between two scrapes (histograms()): how many,
    the share at most goal_s, and the bucket bounds the median and the 99th percentile fall under."""
    if not after[0]:  # a coordinator without that histogram
        return {"calls": 0, "share_within_goal": None, "p50_under_ms": None, "p99_under_ms": None}
    bounds = sorted(after[0])
    counts = {b: sum(a.get(b, 0.0) - f.get(b, 0.0) for a, f in zip(after, before, strict=True)) for b in bounds}
    total = counts[bounds[-1]] if bounds else 0.0

    def under_ms(q: float) -> float | None:  # the last bound (+Inf) holds every call
        return 1000 * next(b for b in bounds if counts[b] >= q * total) if total else None

    return {
        "calls": int(total),
        "share_within_goal": round(counts.get(goal_s, 0.0) / total, 4) if total else None,
        "p50_under_ms": under_ms(0.5),
        "p99_under_ms": under_ms(0.99),
    }


def rates(before: list[dict[str, float]], after: list[dict[str, float]], seconds: float) -> dict[str, float]:
    """Per second over all replicas: commits, heartbeats, LeaseTasks calls; and commits per heartbeat."""
    d = {k: sum(a[k] - b[k] for a, b in zip(after, before, strict=True)) / seconds for k in before[0]}
    return {
        "commits_per_s": round(d["commits"], 1),
        "heartbeats_per_s": round(d["heartbeats"], 1),
        "lease_calls_per_s": round(d["leases"], 1),
        "commits_per_heartbeat": round(d["commits"] / d["heartbeats"], 3) if d["heartbeats"] else 0.0,
    }


def backend_cpu_s(name: str) -> float:
    """CPU seconds so far of the PostgreSQL backends serving database `name` (their process title
    names it: "postgres: USER DBNAME HOST(PORT) STATE"). Backends that ended are not counted."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        title = cmd[0] if cmd else ""
        if title.startswith("postgres:") and f" {name} " in title:
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
    return total


_SWEEP = re.compile(
    rb"garbage collector sweep: (\d+) unreachable objects of the last \d+ s, (\d+) ms, (\d+) objects frozen"
)


def gc_sweeps(log: Path, offset: int) -> list[dict[str, int]]:
    """The sweeps (services.collector) a coordinator's log records past byte `offset`: each one's
    pause, the unreachable objects it found and the objects it walked (frozen after it)."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read()
    return [dict(ms=int(ms), found=int(found), objects=int(n)) for found, ms, n in _SWEEP.findall(text)]
