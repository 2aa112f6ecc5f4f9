"""CPU seconds per test, counting the processes a test starts: a pytest plugin for picking
what to make cheaper in the suite (wall time hides it: tests mostly wait on their processes).

    bash deploy/test.sh -p tests.cpureport      # then: python -m tests.cpureport

Each test's cost is this process's CPU plus that of the children it reaped (and theirs:
a node daemon reaps its worker) during the test's setup, call and teardown, so a module
grid's start-up lands on the test that first asked for it and the rest of its life on the
last (with this plugin on, tests/integration/conftest.py's Stopper stops grids in place
rather than in the background, where their CPU would land on whatever test ran next).
Processes never reaped (killed daemons' orphans) and the PostgreSQL server are not counted. Lines go to
TENSORGRID_CPU_REPORT (default var/cpu-report.jsonl), one JSON object per test, with the xdist
worker and the wall-clock start and end of the test, so a run also shows how the workers were
packed (`python -m tests.cpureport --workers`: each worker's busy time and its last tests).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Generator
from pathlib import Path

import pytest

REPORT = Path(os.environ.get("TENSORGRID_CPU_REPORT", "var/cpu-report.jsonl"))


def _cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    before, started = _cpu_seconds(), time.time()
    yield
    line = {
        "test": item.nodeid,
        "cpu_s": round(_cpu_seconds() - before, 3),
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        "start": round(started, 2),
        "end": round(time.time(), 2),
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a", encoding="utf-8") as out:  # appends of one short line do not interleave
        out.write(json.dumps(line) + "\n")


def workers(entries: list[dict[str, object]]) -> None:
    """Print each worker's span and busy time, and the tests it ran last: a worker that ends
    long after the others ran a long tail alone."""
    timed = [e for e in entries if "start" in e]
    if not timed:
        print("no timings in this report")
        return
    origin = min(float(e["start"]) for e in timed)  # type: ignore[arg-type]
    by_worker: dict[str, list[dict[str, object]]] = defaultdict(list)
    for e in timed:
        by_worker[str(e["worker"])].append(e)
    for name, runs in sorted(by_worker.items()):
        runs.sort(key=lambda e: float(e["start"]))  # type: ignore[arg-type]
        busy = sum(float(e["end"]) - float(e["start"]) for e in runs)  # type: ignore[arg-type]
        end = max(float(e["end"]) for e in runs) - origin  # type: ignore[arg-type]
        cpu = sum(float(e["cpu_s"]) for e in runs)  # type: ignore[arg-type]
        print(f"{name}: {len(runs)} tests, busy {busy:.0f} s, ends at {end:.0f} s, {cpu:.0f} CPU-s")
        for e in runs[-3:]:
            start = float(e["start"]) - origin  # type: ignore[arg-type]
            print(f"    {start:6.0f} s +{float(e['end']) - float(e['start']):5.1f} s  {e['test']}")  # type: ignore[arg-type]


def main(argv: list[str]) -> None:
    """Print CPU seconds per test file, largest first, from a report (--workers: the packing)."""
    show_workers = "--workers" in argv
    argv = [a for a in argv if a != "--workers"]
    path = Path(argv[0]) if argv else REPORT
    entries = [json.loads(raw) for raw in path.read_text(encoding="utf-8").splitlines()]
    if show_workers:
        workers(entries)
        return
    by_file: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for entry in entries:
        name = entry["test"].split("::", 1)[0]
        by_file[name] += entry["cpu_s"]
        count[name] += 1
    total = sum(by_file.values())
    for name, seconds in sorted(by_file.items(), key=lambda kv: -kv[1]):
        print(f"{seconds:8.1f} s  {100 * seconds / total:5.1f}%  {count[name]:4d} tests  {name}")
    print(f"{total:8.1f} s  total")


if __name__ == "__main__":
    main(sys.argv[1:])
