"""Dispatch: no-op tasks per second end to end through the coordinator, next to a raw
grpc.aio echo RPC rate measured in the same run with the same client concurrency.

A task is lease → signed result → verified → recorded. A busy node asks for its next
lease with each result (piggybacked leasing), and a small output travels in one unary
SubmitSmallResult, so a task costs one unary RPC and a share of one group-committed
transaction. Goal: ≥ 0.25 of the raw rate.

What a simulated node does (all of them run in this process, one NodeClient each): register;
then, until the job is done: when it holds no lease, LeaseTasks for --lease-batch (no long
poll; 10 ms sleep when none came); take its first held lease, sign the receipt of the empty
output (a no-op task runs nothing) and send it in SubmitSmallResult, asking for --lease-batch
next leases when it holds no other; hold the leases the answer carries. With the default
--lease-batch 1 that is one SubmitSmallResult round trip per task, one call in flight per node.

That is what the node daemon's slot (node/slot.py) does with tasks that take no time: the lease
it holds ahead starts the moment a task ends, the ended task's result goes in beside it asking
for the next lease, and the slot must wait for that answer before it has another task to start:
one result call in flight per slot, one round trip per task. The daemon's own extras cost
nothing here: its heartbeats come every 5 s, and the empty input it fetches comes from its cache
after the first task. The echo baseline runs the same number of callers, one call in flight
each, so the ratio compares a task's round trip with a bare RPC's at equal concurrency.

The same run measures both again over TLS (a local CA; the raw echo over TLS too): the TLS
ratio is TLS-grid / TLS-echo. Goal: TLS costs ≤ 10% of the plain ratio.

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
from typing import Any

from benchmarks._common import CpuMeter, baseline_process, child_pids, emit
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localca import TlsFiles, make_local_ca
from tensorgrid.localgrid import LocalGrid
from tensorgrid.nodeclient import NodeClient
from tensorgrid.tls import ClientTls, open_channel
from tensorgrid.types import BlobRef, Capabilities, Lease

CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
EMPTY = BlobRef(hashlib.sha256(b"").hexdigest(), 0)
PLAIN = ClientTls()


async def raw_echo_rate(port: int, concurrency: int, seconds: float, tls: ClientTls = PLAIN) -> float:
    channel = open_channel(f"127.0.0.1:{port}", tls, aio=True)
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


async def grid_task_rate(target: str, tasks: int, nodes: int, batch: int, tls: ClientTls = PLAIN) -> tuple[float, int]:
    clients = [NodeClient(target, Signer.generate(), tls=tls) for _ in range(nodes)]
    for c in clients:
        await c.register(CPU)
    submitter = Signer.generate()
    with Client(target, submitter, ca_cert=tls.ca_cert) as sdk:
        job = sdk.submit_noop(tasks)
    done = 0
    rejected = 0

    async def node(c: NodeClient) -> None:
        # As the daemon's slot does (module docstring): LeaseTasks only when it holds nothing; the
        # result of its last lease asks for the next ones (piggybacked leasing).
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
    with Client(target, submitter, ca_cert=tls.ca_cert) as sdk:  # a job is visible to its submitter only
        final = sdk.wait(job.job_id)
    assert final.tasks_done == tasks, f"only {final.tasks_done}/{tasks} tasks recorded"
    return done / elapsed, rejected


def measure(root: Path, ns: argparse.Namespace, tls: TlsFiles | None) -> dict[str, Any]:
    """One run: the raw echo baseline, then the grid, both plain text or both over TLS."""
    client_tls = ClientTls(tls.ca_cert) if tls is not None else PLAIN
    name = "TLS" if tls is not None else "plain"
    with baseline_process(root, "echo", None, *(tls.coordinator_args if tls else ())) as port:
        echo_cpu = CpuMeter(*child_pids(), os.getpid())
        echo_cpu.start()
        start = time.monotonic()
        raw = asyncio.run(raw_echo_rate(port, ns.nodes, ns.seconds, client_tls))
        echo_ms = echo_cpu.per(raw * (time.monotonic() - start))
    print(f"{name}: raw grpc.aio echo: {raw:,.0f} RPC/s with {ns.nodes} concurrent callers")
    with LocalGrid(root / f"grid-{name}", tls=tls) as grid:
        args = ("--database-url", ns.database_url) if ns.database_url else ()
        grid.start_coordinator(*args)
        grid_cpu = CpuMeter(grid.procs[0].popen.pid, os.getpid())
        grid_cpu.start()  # includes registering the nodes and submitting the job
        rate, rejected = asyncio.run(grid_task_rate(grid.target, ns.tasks, ns.nodes, ns.lease_batch, client_tls))
        task_ms = grid_cpu.per(ns.tasks)
    print(f"{name}: grid: {rate:,.0f} no-op tasks/s end to end ({ns.tasks} tasks, {ns.nodes} simulated nodes)")
    cpu: dict[str, Any] = {}
    e_server, e_client = echo_ms if len(echo_ms) == 2 else (None, None)
    t_coord, t_nodes = task_ms
    if e_server is not None and e_client is not None and t_coord is not None and t_nodes is not None:
        cpu = {
            "echo_cpu_ms_per_rpc": {"server": round(e_server, 3), "client": round(e_client, 3)},
            "task_cpu_ms": {"coordinator": round(t_coord, 3), "nodes": round(t_nodes, 3)},
            # The ratio in CPU terms (echo CPU per RPC / CPU per task): moves less with other load.
            "cpu_ratio": round((e_server + e_client) / (t_coord + t_nodes), 4),
        }
        print(f"{name}: CPU: {e_server + e_client:.3f} ms per echo RPC, {t_coord + t_nodes:.3f} ms per task")
    return {
        "raw_echo_rps": round(raw, 1),
        "tasks_per_s": round(rate, 1),
        "ratio": round(rate / raw, 4),
        "rejected": rejected,
        **cpu,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=4000)
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0, help="duration of the raw echo measurement")
    p.add_argument("--lease-batch", type=int, default=1, help="tasks asked for per LeaseTasks call")
    p.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    p.add_argument("--no-tls", action="store_true", help="skip the TLS run")
    ns = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        root = Path(tmp)
        plain = measure(root, ns, None)
        tls = None if ns.no_tls else measure(root, ns, make_local_ca(root / "tls"))
    result: dict[str, Any] = {
        "benchmark": "dispatch",
        **plain,
        "goal_ratio": 0.25,
        "tasks": ns.tasks,
        "nodes": ns.nodes,
        "lease_batch": ns.lease_batch,
        "database": "postgresql" if ns.database_url else "sqlite",
    }
    if tls is not None:
        # TLS-grid / TLS-raw against plain-grid / plain-raw: what TLS costs the ratio.
        result["tls"] = tls
        result["tls_ratio"] = tls["ratio"]
        result["tls_ratio_cost"] = round(1 - tls["ratio"] / plain["ratio"], 4)
        result["goal_tls_ratio_cost"] = 0.10
        if "cpu_ratio" in plain and "cpu_ratio" in tls:
            result["tls_cpu_ratio_cost"] = round(1 - tls["cpu_ratio"] / plain["cpu_ratio"], 4)
        print(f"ratio plain {plain['ratio']:.3f}, TLS {tls['ratio']:.3f} (TLS costs {result['tls_ratio_cost']:.1%})")
    emit(result)


if __name__ == "__main__":
    main()
