"""Fleet: many simulated nodes against one coordinator, then against two replicas sharing PostgreSQL.

The nodes (benchmarks._fleet) are lightweight clients of the real node API, one gRPC channel
and TCP connection each, doing the daemon's calls with their own keys: register with a
signed challenge, heartbeat, long-poll LeaseTasks, hand in signed results. They are split over
--node-processes client processes (2 by default, at least one per coordinator), the same number
for one replica as for two. At each size (--sizes: 100 and 1,000 by default, which fit the
five minutes on two cores; 5,000 takes about four minutes alone), on a fresh PostgreSQL database:

- memory: the coordinator's RSS before and after the nodes connect, per node;
- idle cost: while every node is connected and idle (heartbeating and long-polling an empty
  queue), per second: the database's commits, Heartbeat and LeaseTasks calls as the
  coordinator counts them, and the cores the coordinator, PostgreSQL and the simulated nodes
  use (idle_cores), and the coordinator's full garbage collections (idle_full_gc: how many, the
  bucket bounds of their pauses; idle_gc_sweeps: each sweep the coordinators logged, its pause
  and the objects it walked: one per 600 s unless --gc-sweep-s is shorter than the window).
  Over two long polls of every node by default (2 × (wait + the 0.5 s retry hint)): the nodes
  registered together, so their polls end together, and a window a whole number of polls long
  counts each node's calls whole;
- lease latency: p50/p99 of LeaseTasks calls that find queued no-op tasks, while the nodes
  hold each task a random time so that the fleet leases --lease-rate tasks/s. As the nodes
  see it (lease), and as the coordinator's own histogram has it (lease_server_side: the share
  within the goal's 50 ms, the bucket bounds p50 and p99 fall under; coordinator_loop_lag: its
  event loop's lateness, which a call waits before its handler starts); beside them the cores
  the coordinator, the simulated nodes and PostgreSQL used (lease_phase_cores) and how late
  the nodes' event loop ran (nodes_loop_lag_ms, part of every latency they measure): the
  simulated nodes share the two cores, which a real fleet does not; the heartbeats the nodes sent
  a second, on average and in the busiest second (lease_phase_heartbeats_per_s: bunched
  heartbeats held up the leases of their second), and the coordinator's full collections;
- throughput: no-op tasks/s with every node taking tasks back to back (piggybacked leasing).

Baseline, in the same run: the same number of channels to a raw grpc.aio echo server
(benchmarks._raw): its RSS per connection, and its latency at the same call rate.
Then --replica-nodes nodes split over two coordinator replicas on one database: the
throughput ratio two replicas / one replica (the one-replica figure is the same size's).

Goals: 5,000 nodes on one coordinator with lease p99 ≤ 50 ms, two replicas ≥ 1.3× one.

    python -m benchmarks.fleet [--sizes 100,1000] [--replica-nodes 1000] [--database-url URL]
    python -m benchmarks.fleet --sizes 5000 --replica-nodes 5000 --no-baseline   # the goal's size
    ... --sizes 5000 --replica-nodes 0, then --sizes "" --replica-nodes 5000 --replicas-only   # each < 5 min
    ... --profile DIR   # py-spy (if installed) records each process during each latency phase
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil

from benchmarks._common import baseline_server, cpu_seconds, emit
from benchmarks._fleet_procs import (
    FleetProcess,
    ask_all,
    fleet_process,
    heartbeat_rate,
    merge_errors,
    percentiles,
    phase_cpu,
    rss,
    worst_lag,
)
from benchmarks._pg import (
    DEFAULT_ADMIN_URL,
    backend_cpu_s,
    bucket_summary,
    free_port,
    fresh_database,
    gc_sweeps,
    histograms,
    rates,
    scrape,
)
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.rpc import LEASE_WAIT_MS

IDLE_RETRY_S = 0.5  # what an empty long poll's answer asks a node to wait (the scheduler's IDLE_RETRY_MS)
GOAL_S = 0.05  # lease p99 goal (a bound of the coordinator's latency histogram)


def start_replicas(
    stack: ExitStack, root: Path, url: str, replicas: int, extra: list[str]
) -> tuple[list[LocalGrid], list[int]]:
    """Coordinators on one database, and their metrics ports; replicas share the first one's key
    (one EIP-712 domain)."""
    grids: list[LocalGrid] = []
    ports = [free_port() for _ in range(replicas)]
    for r in range(replicas):
        grid = stack.enter_context(LocalGrid(root / f"replica{r}"))
        if grids:
            (grid.root / "coordinator").mkdir(parents=True, exist_ok=True)
            shutil.copy(grids[0].root / "coordinator" / "coordinator.key", grid.root / "coordinator")
        grid.start_coordinator("--metrics-listen", f"127.0.0.1:{ports[r]}", *extra, database_url=url)
        grids.append(grid)
    return grids, ports


def connect(stack: ExitStack, grids: list[LocalGrid], nodes: int, ns: argparse.Namespace) -> list[FleetProcess]:
    """The nodes split evenly over max(replicas, --node-processes) fleet processes, process i
    connecting to replica i mod replicas; returns once every node registered. One replica and
    two get the same number of client processes: the simulated nodes' own capacity (one event
    loop per process) is then the same on both sides of the replica ratio."""
    procs = max(len(grids), ns.node_processes)
    share, task_s = -(-nodes // procs), max(0.05, nodes / ns.lease_rate)
    fleets = []
    for i in range(procs):
        count = min(share, nodes - i * share)
        target = grids[i % len(grids)].target
        args = ["--target", target, "--first", str(i * share), "--count", str(count), "--task-s", str(task_s)]
        args += ["--lease-wait-ms", str(ns.lease_wait_ms)]
        fleets.append(stack.enter_context(fleet_process(*args, nice=ns.nodes_nice)))
    registered = 0
    for f in fleets:
        ready = f.answer()
        registered += ready["ready"]
        print(f"  {ready['ready']} nodes registered in {ready['register_s']} s", flush=True)
    assert registered == nodes, f"{registered} of {nodes} nodes registered"
    return fleets


def latency_phase(
    grids: list[LocalGrid], fleets: list[FleetProcess], ns: argparse.Namespace, sdk: Client, db: str, ports: list[int]
) -> Any:
    """Nodes in hold mode lease one task at a time with LeaseTasks, at --lease-rate over the fleet,
    from a queue that never runs dry during the phase; returns the job, the latencies the nodes
    saw, their reports, and the coordinator's side of the phase (server_side)."""
    ask_all(fleets, "mode hold")
    time.sleep(1.0)  # the long polls under way end (a change of mode ends them); each node now waits, then asks
    job = sdk.submit_noop(int(ns.lease_rate * ns.latency_s * 1.5) + 10)
    ask_all(fleets, f"mark {job.job_id} {time.time()}")
    # The coordinator's own histogram from a second on: long polls begun on the empty queue
    # before the job (woken by it, their wait inside their time) have ended by then.
    time.sleep(1.0)
    pids = [g.procs[0].popen.pid for g in grids]
    hist0, cpu0, start = [histograms(port) for port in ports], phase_cpu(pids, fleets, db), time.monotonic()
    with py_spy(ns.profile and str(Path(ns.profile) / db), pids, fleets, ns.latency_s - 1.0):
        time.sleep(ns.latency_s - 1.0)
    cpu1, wall = phase_cpu(pids, fleets, db), time.monotonic() - start
    hist1 = [histograms(port) for port in ports]
    server = {
        "lease": bucket_summary([h["lease"] for h in hist0], [h["lease"] for h in hist1], GOAL_S),
        "loop_lag": bucket_summary([h["loop"] for h in hist0], [h["loop"] for h in hist1], GOAL_S),
        "full_gc": bucket_summary([h["gc2"] for h in hist0], [h["gc2"] for h in hist1], GOAL_S),
    }
    reports = ask_all(fleets, "report")
    beats = heartbeat_rate(reports, start, start + wall)
    # Cores each side used over the phase: the simulated nodes share the machine's two cores
    # with the coordinator and PostgreSQL, unlike a real fleet.
    cores = {k: round((cpu1[k] - cpu0[k]) / wall, 2) for k in cpu0}
    side = {"server_side": server, "cores": cores, "heartbeats_per_s": beats}
    return job.job_id, [x for r in reports for x in r["lease_ms"]], reports, side


@contextmanager
def py_spy(folder: str, pids: list[int], fleets: list[FleetProcess], seconds: float) -> Iterator[None]:
    """--profile: py-spy records the coordinators and the simulated nodes for `seconds` (collapsed
    stacks in folder/*.txt: count the frames with grep, or feed them to a flame graph tool)."""
    if not folder:
        yield
        return
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    Path(folder).mkdir(parents=True, exist_ok=True)
    targets = [(f"coordinator{i}", p) for i, p in enumerate(pids)] + [
        (f"nodes{i}", f.popen.pid) for i, f in enumerate(fleets)
    ]
    spies = [
        subprocess.Popen(
            [exe, "record", "--format", "raw", "--rate", "50", "--nonblocking", "--pid", str(pid)]
            + ["--duration", str(max(1, int(seconds))), "--output", str(Path(folder) / f"{name}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in targets
    ]
    try:
        yield
    finally:
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


def throughput_phase(
    grids: list[LocalGrid], fleets: list[FleetProcess], ns: argparse.Namespace, db: str, sdk: Client, left: str
) -> Any:
    """Nodes take no-op tasks back to back (the latency phase's leftovers, then --tasks more):
    accepted results per second, and who spent the CPU."""
    pids = [g.procs[0].popen.pid for g in grids]
    cpu0 = [cpu_seconds(p) or 0.0 for p in pids], [cpu_seconds(f.popen.pid) or 0.0 for f in fleets], backend_cpu_s(db)
    psutil.cpu_percent()
    start = time.time()
    ask_all(fleets, f"mark * {start}")
    ask_all(fleets, "mode noop")
    job = sdk.submit_noop(ns.tasks)
    sdk.wait(left)
    sdk.wait(job.job_id)
    busy = psutil.cpu_percent()
    reports = ask_all(fleets, "report")
    ask_all(fleets, "mode idle")
    done = sum(r["done"] for r in reports)
    elapsed = max(r["last_done"] for r in reports) - start
    coord = sum(cpu_seconds(p) or 0.0 for p in pids) - sum(cpu0[0])
    clients = sum(cpu_seconds(f.popen.pid) or 0.0 for f in fleets) - sum(cpu0[1])
    pg = backend_cpu_s(db) - cpu0[2]
    return {
        "tasks_per_s": round(done / elapsed, 1),
        "tasks_done": done,
        "cpu_ms_per_task": {
            "coordinator": round(1000 * coord / done, 3),
            "nodes": round(1000 * clients / done, 3),
            "postgres": round(1000 * pg / done, 3),
        },
        "machine_busy_pct": busy,
        "errors": merge_errors(reports),
    }


def measure_grid(root: Path, ns: argparse.Namespace, nodes: int, replicas: int) -> dict[str, Any]:
    name = f"fleet_{os.getpid()}_{nodes}_{replicas}"
    print(f"{nodes} nodes, {replicas} coordinator(s):", flush=True)
    with fresh_database(ns.database_url, name) as url, ExitStack() as stack:
        grids, metrics = start_replicas(stack, root / name, url, replicas, ns.coordinator_arg)
        pids = [g.procs[0].popen.pid for g in grids]
        time.sleep(1.0)
        before = rss(pids)
        fleets = connect(stack, grids, nodes, ns)
        time.sleep(2.0)
        per_node = (rss(pids) - before) / nodes
        window = ns.idle_s or 2 * (ns.lease_wait_ms / 1000 + IDLE_RETRY_S)
        c0, cpu0 = [scrape(port) for port in metrics], phase_cpu(pids, fleets, name)
        gc0 = [histograms(port)["gc2"] for port in metrics]
        logs = [(g.procs[0].log_path, g.procs[0].log_path.stat().st_size) for g in grids]
        time.sleep(window)
        idle = rates(c0, [scrape(port) for port in metrics], window)
        idle_gc = bucket_summary(gc0, [histograms(port)["gc2"] for port in metrics], GOAL_S)
        cpu1 = phase_cpu(pids, fleets, name)
        idle_cores = {k: round((cpu1[k] - cpu0[k]) / window, 3) for k in cpu0}
        print(f"  {per_node:,.0f} bytes per node; idle: {json.dumps(idle)}, cores {idle_cores}", flush=True)
        with grids[0].client(Signer.generate()) as sdk:
            left, lease_ms, reports, side = latency_phase(grids, fleets, ns, sdk, name, metrics)
            out: dict[str, Any] = {
                "nodes_registered": nodes,
                "rss_bytes_per_node": round(per_node),
                "idle_db": {**idle, "commits_per_node_s": round(idle["commits_per_s"] / nodes, 4)},
                "idle_cores": idle_cores,
                "idle_window_s": round(window, 1),
                "idle_full_gc": idle_gc,
                "idle_gc_sweeps": [s for log, size in logs for s in gc_sweeps(log, size)],
                "lease_wait_ms": ns.lease_wait_ms,
                "lease": percentiles(lease_ms),
                "lease_server_side": side["server_side"]["lease"],
                "coordinator_loop_lag": side["server_side"]["loop_lag"],
                "lease_phase_full_gc": side["server_side"]["full_gc"],
                "lease_phase_cores": side["cores"],
                "nodes_loop_lag_ms": worst_lag(reports),
                "lease_phase_heartbeats_per_s": side["heartbeats_per_s"],
                "lease_errors": merge_errors(reports),
                **throughput_phase(grids, fleets, ns, name, sdk, left),
            }
    print(f"  {json.dumps(out)}", flush=True)
    return out


def measure_echo(root: Path, ns: argparse.Namespace, nodes: int) -> dict[str, Any]:
    """The baseline: `nodes` connections to a raw grpc.aio echo server, called at the lease rate."""
    with baseline_server(root, "echo") as (port, pid):
        time.sleep(0.5)
        before = rss([pid])
        task_s = max(0.05, nodes / ns.lease_rate)
        args = ("--target", f"127.0.0.1:{port}", "--count", str(nodes), "--task-s", str(task_s))
        with fleet_process(*args, "--echo", str(ns.latency_s)) as f:
            f.answer()
            time.sleep(1.0)
            per_conn = (rss([pid]) - before) / nodes
            f.send("go")
            lat = f.answer()["lease_ms"]
    return {"rss_bytes_per_connection": round(per_conn), "echo": percentiles(lat)}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,1000", help="simulated nodes against one coordinator, comma-separated")
    p.add_argument("--replica-nodes", type=int, default=1000, help="nodes split over two replicas (0: skip)")
    p.add_argument("--tasks", type=int, default=1500, help="no-op tasks of each throughput measurement")
    p.add_argument("--lease-rate", type=float, default=100.0, help="leases/s the fleet asks for in the latency phase")
    p.add_argument("--latency-s", type=float, default=8.0, help="length of the latency phase")
    p.add_argument(
        "--idle-s", type=float, default=0.0, help="length of the idle phase (0: two long polls of every node)"
    )
    p.add_argument(
        "--lease-wait-ms", type=int, default=LEASE_WAIT_MS, help="how long the simulated nodes' long polls ask to wait"
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("TENSORGRID_TEST_PG", DEFAULT_ADMIN_URL),
        help="a PostgreSQL server where this may create and drop databases (fleet_<pid>_…)",
    )
    p.add_argument("--coordinator-arg", action="append", default=[], help="an extra coordinator flag (repeatable)")
    p.add_argument(
        "--gc-sweep-s",
        type=float,
        default=0.0,
        help="the coordinators' --gc-sweep-s (0: their 600 s): e.g. 20 times sweeps in the idle phase (idle_gc_sweeps)",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the raw echo baseline")
    p.add_argument(
        "--replicas-only",
        action="store_true",
        help="no one-replica run for the ratio unless --sizes has --replica-nodes (5,000 nodes twice "
        "take over five minutes: measure one replica in a run of its own, --sizes N --replica-nodes 0)",
    )
    p.add_argument(
        "--node-processes",
        type=int,
        default=2,
        help="processes the simulated nodes are split over (at least one per replica)",
    )
    p.add_argument(
        "--nodes-nice",
        type=int,
        default=0,
        help="CPU priority of the simulated nodes' processes (e.g. 10: the coordinator and PostgreSQL first, "
        "as if the nodes ran elsewhere; their own lag then grows)",
    )
    p.add_argument("--profile", default="", help="a folder: py-spy records each latency phase there (raw stacks)")
    return p.parse_args()


def main() -> None:
    ns = parse()
    if ns.gc_sweep_s:
        ns.coordinator_arg += ["--gc-sweep-s", str(ns.gc_sweep_s)]
    sizes = [int(x) for x in ns.sizes.split(",") if x]
    started = time.monotonic()
    sized: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tg-fleet-") as tmp:
        root = Path(tmp)
        for n in sizes:
            sized[str(n)] = measure_grid(root, ns, n, 1)
            if not ns.no_baseline:
                base = measure_echo(root, ns, n)
                sized[str(n)]["baseline"] = base
                grid_p99, echo_p99 = sized[str(n)]["lease"]["p99_ms"], base["echo"]["p99_ms"]
                sized[str(n)]["memory_ratio"] = round(
                    sized[str(n)]["rss_bytes_per_node"] / max(1, base["rss_bytes_per_connection"]), 2
                )
                if grid_p99 and echo_p99:
                    sized[str(n)]["lease_p99_vs_echo"] = round(grid_p99 / echo_p99, 2)
        result: dict[str, Any] = {
            "benchmark": "fleet",
            "sizes": sized,
            "goal_lease_p99_ms": 50,
            "goal_replica_ratio": 1.3,
        }
        if ns.replica_nodes:
            one = sized.get(str(ns.replica_nodes))
            if one is None and not ns.replicas_only:
                one = measure_grid(root, ns, ns.replica_nodes, 1)
            two = measure_grid(root, ns, ns.replica_nodes, 2)
            result["two_replicas"] = two
            if one is not None:
                result["replica_ratio"] = round(two["tasks_per_s"] / one["tasks_per_s"], 3)
    result["wall_s"] = round(time.monotonic() - started, 1)
    emit(result)


if __name__ == "__main__":
    main()
