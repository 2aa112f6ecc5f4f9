"""Helpers shared by the benchmarks: baseline processes, timing, the closing JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tensorgrid.processes import cpu_seconds


@contextmanager
def baseline_server(root: Path, mode: str, path: Path | None = None, *extra: str) -> Iterator[tuple[int, int]]:
    """Start `python -m benchmarks._raw MODE [extra…]` and yield (its port, its PID); stop it afterwards."""
    port_file = root / f"{mode}.port"
    port_file.unlink(missing_ok=True)
    args = [sys.executable, "-m", "benchmarks._raw", mode, "--port-file", str(port_file), *extra]
    if path is not None:
        args += ["--path", str(path)]
    proc = subprocess.Popen(args)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"baseline {mode} did not start")
            time.sleep(0.05)
        yield int(port_file.read_text()), proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def baseline_process(root: Path, mode: str, path: Path | None = None, *extra: str) -> Iterator[int]:
    """baseline_server, yielding its port only."""
    with baseline_server(root, mode, path, *extra) as (port, _):
        yield port


def child_pids() -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()]
    except OSError:
        return []


class CpuMeter:
    """CPU milliseconds per unit of work spent by the given processes between start() and per()."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self._start: list[float | None] = []

    def start(self) -> None:
        self._start = [cpu_seconds(p) for p in self.pids]

    def per(self, units: float) -> list[float | None]:
        out: list[float | None] = []
        for pid, before in zip(self.pids, self._start, strict=True):
            after = cpu_seconds(pid)
            out.append(None if before is None or after is None or units <= 0 else 1000 * (after - before) / units)
        return out


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's one JSON object as the last line."""
    print(json.dumps(result, sort_keys=True))
