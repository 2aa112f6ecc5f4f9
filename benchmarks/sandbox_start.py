"""What starting a sandboxed child costs: exec'd (`python -m tensorgrid.sandbox.boot`, torch
imported by each child) against forked by a zygote (tensorgrid.sandbox.zygote), starts alternating.

    python -m benchmarks.sandbox_start [--starts 5] [--entry coordinator.services.sandbox_child]

A start is WarmSandbox.warm(): from the request to the child's greeting (its imports, prepare()
and confinement done), then the child is killed. CPU-seconds count every process that worked
for it: the child (exec: its rusage once reaped; fork: what the zygote reports), the requester,
and for the fork the zygote's own share (the fork; its one warm-up is printed apart). The last
line is one JSON object: both side by side, medians, and exec/zygote ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tensorgrid.processes import cpu_seconds
from tensorgrid.sandbox import SandboxLimits, WarmSandbox, launch
from tensorgrid.sandbox.forked import ForkedChild

LIMITS = SandboxLimits(time_s=60.0)


def _cpu(pid: int) -> float:
    """utime + stime of process `pid` so far (tensorgrid.processes: Linux /proc)."""
    spent = cpu_seconds(pid)
    if spent is None:
        raise SystemExit(f"cannot read the CPU time of process {pid}: this benchmark needs Linux /proc")
    return spent


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _one(entry: str, zygote_pid: int) -> dict[str, float]:
    """One start: wall seconds to the greeting, and CPU-seconds by whom."""
    children, ours = _children_cpu(), _self_cpu()
    zygote = _cpu(zygote_pid) if zygote_pid else 0.0
    began = time.monotonic()
    sandbox = WarmSandbox(entry, LIMITS)
    sandbox.warm()
    wall = time.monotonic() - began
    proc = sandbox._child.proc  # type: ignore[union-attr]
    sandbox.close()
    if isinstance(proc, ForkedChild):
        child = float(proc.usage.get("utime", 0.0)) + float(proc.usage.get("stime", 0.0))
    else:
        child = _children_cpu() - children
    spent = {
        "child": child,
        "requester": _self_cpu() - ours,
        "zygote": (_cpu(zygote_pid) - zygote) if zygote_pid else 0.0,
    }
    return {"wall_s": wall, "cpu_s": sum(spent.values()), **{f"cpu_{k}_s": v for k, v in spent.items()}}


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 4) for key in runs[0]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sandbox_start")
    parser.add_argument("--starts", type=int, default=5, help="starts of each kind (alternating)")
    parser.add_argument("--entry", default="coordinator.services.sandbox_child", help="the sandboxed entry started")
    ns = parser.parse_args(argv)
    where = Path(tempfile.mkdtemp(prefix="tg-bench-zy-"))
    path = where / "sock"
    began = time.monotonic()
    zygote = launch.start_zygote(path, owner=os.getpid())
    if not launch.wait_ready(str(path), 300):
        raise SystemExit("the zygote did not start")
    warm = {"wall_s": round(time.monotonic() - began, 3), "cpu_s": round(_cpu(zygote.pid), 3)}
    runs: dict[str, list[dict[str, float]]] = {"exec": [], "zygote": []}
    try:
        for i in range(ns.starts):
            for mode in ("exec", "zygote") if i % 2 == 0 else ("zygote", "exec"):
                os.environ[launch.ZYGOTE_ENV] = "off" if mode == "exec" else str(path)
                launch.reset()
                runs[mode].append(_one(ns.entry, zygote.pid if mode == "zygote" else 0))
                print(mode, {k: round(v, 3) for k, v in runs[mode][-1].items()}, flush=True)
    finally:
        zygote.kill()
        zygote.wait()
    exec_, fork = _median(runs["exec"]), _median(runs["zygote"])
    result = {
        "benchmark": "sandbox_start",
        "entry": ns.entry,
        "starts": ns.starts,
        "exec": exec_,
        "zygote": fork,
        "zygote_warm_up": warm,
        "ratio_cpu": round(exec_["cpu_s"] / max(fork["cpu_s"], 1e-6), 1),
        "ratio_wall": round(exec_["wall_s"] / max(fork["wall_s"], 1e-6), 1),
        "load": os.getloadavg()[0],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
