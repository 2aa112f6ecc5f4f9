"""Dispatch: no-op tasks per second end to end through the coordinator, next to a raw
grpc.aio echo RPC rate measured in the same run with the same client concurrency.

A task is lease → signed result → verified → recorded. A busy node asks for its next
lease with each result (piggybacked leasing), and a small output travels in one unary
SubmitSmallResult, so a task costs one unary RPC and a share of one group-committed
transaction. Goal: ≥ 0.25 of the raw rate.

The machine is usually shared, so rates move with other load. Where /proc exists the JSON
also carries CPU time per task (coordinator process; simulated nodes, which run in this
process) and per echo RPC (server process; client), a figure that moves much less.

    python -m benchmarks.dispatch [--tasks 4000] [--nodes 8] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time
from pathlib import Path

import grpc

from benchmarks._common import baseline_process, emit
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.nodeclient import NodeClient
from tensorgrid.rpc import channel_options
from tensorgrid.types import BlobRef, Capabilities, Lease

CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
EMPTY = BlobRef(hashlib.sha256(b"").hexdigest(), 0)


async def raw_echo_rate(port: int, concurrency: int, seconds: float) -> float:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options())
    echo = channel.unary_unary("/bench.Echo/Echo", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    payload = b"x" * 200  # about the size of a lease request plus metadata
    count = 0
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal count
        while time.monotonic() < stop_at:
            await echo(payload)
            count += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    await channel.close()
    return count / elapsed


async def grid_task_rate(target: str, tasks: int, nodes: int, batch: int) -> tuple[float, int]:
    clients = [NodeClient(target, Signer.generate()) for _ in range(nodes)]
    for c in clients:
        await c.register(CPU)
    submitter = Signer.generate()
    with Client(target, submitter) as sdk:
        job = sdk.submit_noop(tasks)
    done = 0
    rejected = 0

    async def node(c: NodeClient) -> None:
        # As the node agent does: LeaseTasks only when it holds nothing; the result of its last
        # lease asks for the next ones (piggybacked leasing).
        nonlocal done, rejected
        held: list[Lease] = []
        while done + rejected < tasks:
            if not held:
                held, _ = await c.lease(batch)
                if not held:
                    await asyncio.sleep(0.01)
                    continue
            lease = held.pop(0)
            answer = await c.submit_and_lease(c.sign(lease, EMPTY), 0, b"", 0 if held else batch)
            done += answer.accepted
            rejected += not answer.accepted
            held.extend(answer.leases)

    start = time.monotonic()
    await asyncio.gather(*(node(c) for c in clients))
    elapsed = time.monotonic() - start
    for c in clients:
        await c.close()
    with Client(target, submitter) as sdk:  # a job is visible to its submitter only
        final = sdk.wait(job.job_id)
    assert final.tasks_done == tasks, f"only {final.tasks_done}/{tasks} tasks recorded"
    return done / elapsed, rejected


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc); None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=4000)
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0, help="duration of the raw echo measurement")
    p.add_argument("--lease-batch", type=int, default=1, help="tasks asked for per LeaseTasks call")
    p.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    ns = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        root = Path(tmp)
        with baseline_process(root, "echo") as port:
            echo_cpu = CpuMeter(*child_pids(), os.getpid())
            echo_cpu.start()
            start = time.monotonic()
            raw = asyncio.run(raw_echo_rate(port, ns.nodes, ns.seconds))
            echo_ms = echo_cpu.per(raw * (time.monotonic() - start))
        print(f"raw grpc.aio echo: {raw:,.0f} RPC/s with {ns.nodes} concurrent callers")
        with LocalGrid(root / "grid") as grid:
            args = ("--database-url", ns.database_url) if ns.database_url else ()
            grid.start_coordinator(*args)
            grid_cpu = CpuMeter(grid.procs[0].popen.pid, os.getpid())
            grid_cpu.start()  # includes registering the nodes and submitting the job
            rate, rejected = asyncio.run(grid_task_rate(grid.target, ns.tasks, ns.nodes, ns.lease_batch))
            task_ms = grid_cpu.per(ns.tasks)
    print(f"grid: {rate:,.0f} no-op tasks/s end to end ({ns.tasks} tasks, {ns.nodes} simulated nodes)")
    cpu: dict[str, dict[str, float]] = {}
    e_server, e_client = echo_ms if len(echo_ms) == 2 else (None, None)
    t_coord, t_nodes = task_ms
    if e_server is not None and e_client is not None and t_coord is not None and t_nodes is not None:
        cpu = {
            "echo_cpu_ms_per_rpc": {"server": round(e_server, 3), "client": round(e_client, 3)},
            "task_cpu_ms": {"coordinator": round(t_coord, 3), "nodes": round(t_nodes, 3)},
        }
        print(f"CPU: {e_server + e_client:.3f} ms per echo RPC, {t_coord + t_nodes:.3f} ms per task")
    emit(
        {
            "benchmark": "dispatch",
            "raw_echo_rps": round(raw, 1),
            "tasks_per_s": round(rate, 1),
            "ratio": round(rate / raw, 4),
            "goal_ratio": 0.25,
            "tasks": ns.tasks,
            "nodes": ns.nodes,
            "lease_batch": ns.lease_batch,
            "rejected": rejected,
            "database": "postgresql" if ns.database_url else "sqlite",
            **cpu,
        }
    )


if __name__ == "__main__":
    main()
