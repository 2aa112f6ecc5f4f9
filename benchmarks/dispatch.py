"""Dispatch: no-op tasks per second end to end through the coordinator, next to a raw
grpc.aio echo RPC rate measured in the same run with the same client concurrency.

A task is lease → signed result → verified → recorded: at least two RPCs, so 0.5 of the
raw rate is the ceiling. Goal: ≥ 0.25.

    python -m benchmarks.dispatch [--tasks 4000] [--nodes 8] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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
from tensorgrid.types import BlobRef, Capabilities

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
    with Client(target, Signer.generate()) as sdk:
        job = sdk.submit_noop(tasks)
    done = 0
    rejected = 0

    async def node(c: NodeClient) -> None:
        nonlocal done, rejected
        while done + rejected < tasks:
            leases, _ = await c.lease(batch)
            if not leases:
                await asyncio.sleep(0.01)
                continue
            for lease in leases:
                ok, _ = await c.submit(c.sign(lease, EMPTY), 0, b"")
                done += ok
                rejected += not ok

    start = time.monotonic()
    await asyncio.gather(*(node(c) for c in clients))
    elapsed = time.monotonic() - start
    for c in clients:
        await c.close()
    with Client(target, Signer.generate()) as sdk:
        final = sdk.wait(job.job_id)
    assert final.tasks_done == tasks, f"only {final.tasks_done}/{tasks} tasks recorded"
    return done / elapsed, rejected


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
            raw = asyncio.run(raw_echo_rate(port, ns.nodes, ns.seconds))
        print(f"raw grpc.aio echo: {raw:,.0f} RPC/s with {ns.nodes} concurrent callers")
        with LocalGrid(root / "grid") as grid:
            args = ("--database-url", ns.database_url) if ns.database_url else ()
            grid.start_coordinator(*args)
            rate, rejected = asyncio.run(grid_task_rate(grid.target, ns.tasks, ns.nodes, ns.lease_batch))
    print(f"grid: {rate:,.0f} no-op tasks/s end to end ({ns.tasks} tasks, {ns.nodes} simulated nodes)")
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
        }
    )


if __name__ == "__main__":
    main()
