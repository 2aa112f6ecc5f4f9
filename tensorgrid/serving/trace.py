"""Opt-in stamps along a served request's path: where the slowest requests' time goes.

Off unless a daemon's entry point calls `start` with TG_SERVE_TRACE=DIR in its environment
(never at import). Then the process writes one line per stamp, `hop key t_ns`, to
DIR/<role>-<pid>.tsv: t from perf_counter_ns, which is CLOCK_MONOTONIC, one clock for every
process of the machine, so stamps of different processes compare. Lines are buffered and
written out every FLUSH_ROWS stamps and at exit: a stamp costs about a microsecond, and a
process killed at once loses its last rows only. Every garbage collection is stamped too
(`gc<generation>` at its start, `gc-` at its end). The sandboxed worker has neither the
variable nor a place to write: its stamps go to its agent with each micro-batch's digests
(node.serving.direct), and the agent writes them. `benchmarks.serving --trace` turns it on for
the grid it starts and reads the files (benchmarks/_serving_trace.py says what each hop is).
"""

from __future__ import annotations

import atexit
import gc
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["ENV", "enabled", "span", "stamp", "start", "stop"]

ENV = "TG_SERVE_TRACE"
FLUSH_ROWS = 4096


class _Trace:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[str] = []

    def add(self, hop: str, key: object, t: int) -> None:
        self.rows.append(f"{hop}\t{key}\t{t}\n")
        if len(self.rows) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        rows, self.rows = self.rows, []
        if rows:
            with self.path.open("a") as f:
                f.writelines(rows)

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        self.add(f"gc{info.get('generation', '')}" if phase == "start" else "gc-", "", time.perf_counter_ns())


_trace: _Trace | None = None


def start(role: str, environ: dict[str, str] | None = None) -> bool:
    """Turn stamping on for this process if TG_SERVE_TRACE names a directory; True if on."""
    global _trace
    directory = (os.environ if environ is None else environ).get(ENV, "")
    if not directory or _trace is not None:
        return _trace is not None
    Path(directory).mkdir(parents=True, exist_ok=True)
    _trace = _Trace(Path(directory) / f"{role}-{os.getpid()}.tsv")
    gc.callbacks.append(_trace.on_gc)
    atexit.register(stop)
    return True


def stop() -> None:
    """Write out what is buffered and stop stamping."""
    global _trace
    trace, _trace = _trace, None
    if trace is not None:
        if trace.on_gc in gc.callbacks:
            gc.callbacks.remove(trace.on_gc)
        trace.flush()


def enabled() -> bool:
    return _trace is not None


def stamp(hop: str, key: object = "", t: int = 0) -> None:
    """One stamp now (or at t, a perf_counter_ns another process took); nothing when off."""
    if _trace is not None:
        _trace.add(hop, key, t or time.perf_counter_ns())


def span(hop: str, key: object, started_ns: int) -> None:
    """Stamp `hop`+ at started_ns and `hop`- now: a stretch of work beside the requests."""
    if _trace is not None:
        _trace.add(hop + "+", key, started_ns)
        _trace.add(hop + "-", key, time.perf_counter_ns())
