"""Where the slowest served requests go: `benchmarks.serving --trace` reads the grid's stamps
(tensorgrid.serving.trace) beside the client's and breaks each request into its hops.

Meant for one client: each request is alone on the path, so a stamp between its send and its
answer is its own (the coordinator's and worker's stamps name the request on the data link,
`replica:request id`, taken from the coordinator's `c.woken`). The hops, in order:

    client          client sends → coordinator's InferStream handler starts (c.in)
    router          c.in → the request written to the replica's data link (c.down)
    link down       c.down → the worker has read it (w.read)
    worker in       w.read → the forward pass starts (w.run): parsing, the compute lock
    forward         w.run → w.ran: the program on the micro-batch
    link up         w.ran → the coordinator has read the reply (c.up): encode, send, wake
    caller          c.up → the waiting call resumes (c.woken)
    answer          c.woken → the answer queued for the stream (c.out)
    to client       c.out → the client has it (gRPC, the client's own loop)

Beside them: what overlapped each request, by kind (a collection in the coordinator or an
agent, an agent signing receipts, the coordinator checking one, a sampled check, its rerun or
referee run): the share of the slowest 1% a kind overlapped against its share of all requests.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import statistics
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tensorgrid.serving import trace

__all__ = ["HOPS", "analyse", "stamping"]

HOPS = ("client", "router", "link down", "worker in", "forward", "link up", "caller", "answer", "to client")
_PATH = ("c.in", "c.down", "w.read", "w.run", "w.ran", "c.up", "c.woken", "c.out")


@contextlib.contextmanager
def stamping(directory: Path | None) -> Iterator[None]:
    """The grid's processes started inside stamp their hops into directory (tensorgrid.serving.trace)."""
    if directory is not None:
        os.environ[trace.ENV] = str(directory)  # the grid's processes inherit it
    try:
        yield
    finally:
        os.environ.pop(trace.ENV, None)


def _read(directory: Path) -> tuple[dict[str, dict[str, int]], dict[str, list[tuple[int, str]]], dict[str, Any]]:
    """Data link stamps by request (`replica:id` → hop → t); the coordinator's c.in, c.out and
    c.woken in time order, (t, key); spans by kind, (start, end) in time order."""
    keyed: dict[str, dict[str, int]] = defaultdict(dict)
    timed: dict[str, list[tuple[int, str]]] = defaultdict(list)
    starts: dict[str, list[int]] = defaultdict(list)
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for path in sorted(directory.glob("*.tsv")):
        role = path.name.split("-", 1)[0]
        gc_at: int | None = None
        for line in path.read_text().splitlines():
            hop, key, t_text = line.split("\t")
            t = int(t_text)
            if hop in ("c.in", "c.out", "c.woken"):
                timed[hop].append((t, key))
            elif hop in _PATH:
                keyed[key].setdefault(hop, t)
            elif hop.startswith("gc") and hop != "gc-":
                gc_at = t
            elif hop == "gc-" and gc_at is not None:
                spans[f"gc {role}"].append((gc_at, t))
                gc_at = None
            elif hop[-1] == "+":
                starts[hop[:-1]].append(t)
            elif hop[-1] == "-" and starts[hop[:-1]]:
                spans[hop[:-1]].append((starts[hop[:-1]].pop(), t))
    return dict(keyed), {k: sorted(v) for k, v in timed.items()}, {k: sorted(v) for k, v in spans.items()}


def _first(rows: list[tuple[int, str]], lo: int, hi: int) -> tuple[int, str] | None:
    i = bisect.bisect_left(rows, (lo, ""))
    return rows[i] if i < len(rows) and rows[i][0] <= hi else None


def _overlaps(spans: list[tuple[int, int]], lo: int, hi: int) -> bool:
    i = bisect.bisect_left(spans, (lo, lo))
    if i < len(spans) and spans[i][0] <= hi:
        return True
    return any(end >= lo for _, end in spans[max(0, i - 8) : i])  # spans are short: a few behind suffice


def analyse(directory: Path, requests: list[tuple[int, int]]) -> dict[str, Any]:
    """The hop breakdown of the median request and of the slowest 1% of `requests` (the
    client's (sent, answered) perf_counter_ns pairs), in µs, and what overlapped them."""
    keyed, timed, spans = _read(directory)
    rows: list[tuple[float, list[float], set[str]]] = []
    for sent, got in requests:
        c_in, c_woken, c_out = (_first(timed.get(hop, []), sent, got) for hop in ("c.in", "c.woken", "c.out"))
        if c_in is None or c_woken is None or c_out is None:
            continue
        link = keyed.get(c_woken[1], {})
        path = [sent, c_in[0], *(link.get(hop) for hop in _PATH[1:6]), c_woken[0], c_out[0], got]
        times = [t for t in path if t is not None]
        if len(times) != len(path):
            continue
        hops = [(b - a) / 1000 for a, b in zip(times, times[1:], strict=False)]
        beside = {kind for kind, s in spans.items() if _overlaps(s, sent, got)}
        rows.append(((got - sent) / 1000, hops, beside))
    return _summary(rows, len(requests))


def _summary(rows: list[tuple[float, list[float], set[str]]], asked: int) -> dict[str, Any]:
    if len(rows) < 100:
        return {"requests": asked, "traced": len(rows), "note": "too few traced requests for a slowest 1%"}
    rows.sort(key=lambda r: r[0])
    slow = rows[-max(1, len(rows) // 100) :]
    median = [statistics.median(r[1][h] for r in rows) for h in range(len(HOPS))]
    slow_median = [statistics.median(r[1][h] for r in slow) for h in range(len(HOPS))]
    # in each slow request, the hop that ran furthest past its median
    worst: dict[str, int] = defaultdict(int)
    for _, hops, _ in slow:
        worst[HOPS[max(range(len(HOPS)), key=lambda h: hops[h] - median[h])]] += 1
    kinds = sorted({k for r in rows for k in r[2]})
    return {
        "requests": asked,
        "traced": len(rows),
        "slowest": len(slow),
        "total_us": {"median": round(statistics.median(r[0] for r in rows), 1), "slowest_from": round(slow[0][0], 1)},
        "hops_us": {
            hop: {"median": round(m, 1), "slowest_median": round(s, 1)}
            for hop, m, s in zip(HOPS, median, slow_median, strict=True)
        },
        "furthest_past_median": dict(sorted(worst.items(), key=lambda kv: -kv[1])),
        "overlapped": {
            kind: {
                "all": round(sum(kind in r[2] for r in rows) / len(rows), 3),
                "slowest": round(sum(kind in r[2] for r in slow) / len(slow), 3),
            }
            for kind in kinds
        },
    }
