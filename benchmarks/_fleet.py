"""Simulated nodes for benchmarks.fleet: one process holding many nodes over the real node API.

Each simulated node does what the node daemon (node/agent.py) does, with no executor: it
registers by signing the coordinator's challenge with its own secp256k1 key (derived from
its index, so 5,000 keys take a fraction of a second), heartbeats at the interval the
coordinator asks for, long-polls LeaseTasks (wait_ms) when it holds nothing, and hands in
a signed receipt for an empty output. Every node has its own gRPC channel and its own TCP
connection, as a real fleet has (gRPC would otherwise share one connection per process).

Modes, switched by the parent over stdin (one command per line; answers are JSON lines):
- "hold": a node waits a random time (mean --task-s: busy with other work) before each
  LeaseTasks, and hands the result in at once asking for no next lease, so every task is
  leased by LeaseTasks at a steady rate: the lease-latency phase.
- "noop": results go in at once and ask for the next lease (piggybacked, as the daemon does):
  the throughput phase.
- "echo": no coordinator; the channels call the raw echo server of benchmarks._raw at the
  hold mode's rate: the baseline.

    python -m benchmarks._fleet --target HOST:PORT --first 0 --count 100 [--echo]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from benchmarks._raw import ECHO_METHOD
from tensorgrid.crypto import Signer
from tensorgrid.heartbeats import HeartbeatClock
from tensorgrid.nodeclient import NodeClient
from tensorgrid.rpc import LEASE_WAIT_MS, retry_after_s, unless_set
from tensorgrid.tls import open_channel
from tensorgrid.types import BlobRef, Capabilities, Lease

CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
EMPTY = BlobRef(hashlib.sha256(b"").hexdigest(), 0)
LAG_TICK_S = 0.01  # the loop-lag probe's sleep
REGISTER_AT_ONCE = 128  # below the coordinator's concurrent calls per IP address without a session


def node_signer(index: int) -> Signer:
    """The key of simulated node `index`: the same on every run, so runs are comparable."""
    return Signer(hashlib.sha256(b"tensorgrid-fleet-node-%d" % index).digest())


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (one socket per node); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Tally:
    """What the nodes saw since the parent's last "mark"."""

    job: str = ""  # only leases and results of this job count ("*": any job, "": none)
    since: float = 0.0  # wall time at which the job's tasks were queued
    lease_ms: list[float] = field(default_factory=list)  # LeaseTasks calls begun after `since` that got work
    done: int = 0
    rejected: int = 0
    last_done: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    lag_ms: list[float] = field(default_factory=list)  # how late this process's event loop ran (Fleet.watch_lag)
    beats: dict[int, int] = field(default_factory=dict)  # heartbeats sent in each second (wall clock, whole seconds)

    def counts(self, job_id: str) -> bool:
        return self.job in ("*", job_id)

    def error(self, e: grpc.aio.AioRpcError) -> None:
        self.errors[e.code().name] = self.errors.get(e.code().name, 0) + 1

    def report(self) -> dict[str, Any]:
        return {
            "lease_ms": [round(x, 3) for x in self.lease_ms],
            "done": self.done,
            "rejected": self.rejected,
            "last_done": self.last_done,
            "errors": self.errors,
            "loop_lag_ms": lag_summary(self.lag_ms),
            "beats": self.beats,
        }


def lag_summary(lags: list[float]) -> dict[str, float | None]:
    """p50, p99 and the worst of the loop's lateness (ms)."""
    if not lags:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(lags)
    p50, p99 = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.99))
    return {"p50": round(p50, 2), "p99": round(p99, 2), "max": round(ordered[-1], 2)}


class Fleet:
    """The simulated nodes of this process and the mode they run in."""

    def __init__(self, target: str, first: int, count: int, task_s: float, lease_wait_ms: int = LEASE_WAIT_MS) -> None:
        self.target = target
        self.indexes = range(first, first + count)
        self.task_s = task_s
        self.lease_wait_ms = lease_wait_ms
        self.mode = "idle"  # long-polls an empty queue, as "noop" does
        self.mode_changed = asyncio.Event()
        self.tally = Tally()
        self.clients: list[NodeClient] = []
        self.held: dict[str, Lease | None] = {}  # node address → the lease it runs (for its heartbeats)
        self._tasks: list[asyncio.Task[None]] = []

    async def register(self) -> int:
        """Register every node (at most REGISTER_AT_ONCE at a time, retrying refusals), each starting
        to heartbeat and lease once registered; returns how many."""
        gate = asyncio.Semaphore(REGISTER_AT_ONCE)

        async def one(i: int) -> NodeClient:
            client = NodeClient(self.target, node_signer(i), own_connection=True)
            for failures in range(1, 30):
                async with gate:
                    try:
                        await client.register(CPU)
                        self._start(client)  # as the daemon does: its loops begin once it is registered
                        return client
                    except grpc.aio.AioRpcError as e:
                        self.tally.error(e)
                        if failures == 29:
                            raise
                        delay = retry_after_s(e, failures)
                await asyncio.sleep(delay)
            raise AssertionError("unreachable")

        self.clients = list(await asyncio.gather(*(one(i) for i in self.indexes)))
        return len(self.clients)

    async def watch_lag(self) -> None:
        """How late this process's event loop wakes a sleeper: a lease answer that arrived in
        time waits as long before its node sees it, so the simulated nodes' own CPU shortage
        is part of the lease latency they measure (reported beside it)."""
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LAG_TICK_S)
            self.tally.lag_ms.append(1000 * (time.perf_counter() - before - LAG_TICK_S))

    def _start(self, c: NodeClient) -> None:
        self._tasks.append(asyncio.create_task(self._heartbeats(c)))
        self._tasks.append(asyncio.create_task(self._work(c)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.clients))

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.mode_changed.set()
        self.mode_changed = asyncio.Event()

    async def _heartbeats(self, c: NodeClient) -> None:
        """As node.agent's loop: the Register interval while holding a lease, the idle one the
        coordinator's answers give while holding none."""
        clock = HeartbeatClock(c, time.monotonic())
        while True:
            await asyncio.sleep(clock.sleep_s(time.monotonic()))
            lease = self.held.get(c.signer.address)
            if not clock.due(time.monotonic(), lease is not None):
                continue
            second = int(time.time())
            self.tally.beats[second] = self.tally.beats.get(second, 0) + 1
            try:
                await c.heartbeat([(lease.task_id, lease.attempt)] if lease else [])
            except grpc.aio.AioRpcError as e:
                self.tally.error(e)

    async def _hold(self) -> None:
        """Hold mode's wait before a lease, cut short when the mode changes."""
        if self.mode != "hold":
            return
        try:
            await asyncio.wait_for(self.mode_changed.wait(), random.uniform(0, 2 * self.task_s))
        except TimeoutError:
            pass

    async def _lease(self, c: NodeClient) -> Lease | None:
        """One LeaseTasks long poll, as node.slot's _lease_one does; a change of mode ends it, as
        draining ends the daemon's (so hold mode begins at once, not when the polls time out)."""
        started = time.time()
        call = await unless_set(c.lease(1, wait_ms=self.lease_wait_ms), self.mode_changed)
        if call is None:
            return None
        try:
            leases, retry_ms = call.result()
        except grpc.aio.AioRpcError as e:
            self.tally.error(e)
            busy = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep((retry_after_s(e, 1) if busy else 0.5) + random.random())
            return None
        t = self.tally
        if leases and t.counts(leases[0].job_id) and started >= t.since:
            t.lease_ms.append(1000 * (time.time() - started))
        if not leases and retry_ms:
            await asyncio.sleep(min(retry_ms, 10_000) / 1000)
        return leases[0] if leases else None

    async def _work(self, c: NodeClient) -> None:
        lease: Lease | None = None
        while True:
            if lease is None:
                await self._hold()  # hold mode: busy with something else first, then ask
                lease = await self._lease(c)
                if lease is None:
                    continue
            want = 1 if self.mode == "noop" else 0
            self.held[c.signer.address] = lease
            try:
                answer = await c.submit_and_lease(c.sign(lease, EMPTY), 0, b"", want)
            except grpc.aio.AioRpcError as e:
                self.tally.error(e)
                lease = None
                continue
            finally:
                self.held[c.signer.address] = None
            t = self.tally
            if t.counts(lease.job_id):
                t.done += answer.accepted
                t.rejected += not answer.accepted
                t.last_done = time.time()
            lease = answer.leases[0] if answer.leases else None


async def echo_fleet(target: str, count: int, task_s: float, seconds: float) -> dict[str, Any]:
    """The baseline: `count` channels to the raw echo server, each calling it once to connect,
    then at hold mode's rate for `seconds`; the echo latencies in ms."""
    channels = [open_channel(target, aio=True, own_connection=True) for _ in range(count)]
    calls = [ch.unary_unary(ECHO_METHOD, request_serializer=bytes, response_deserializer=bytes) for ch in channels]
    payload = b"x" * 64  # about a LeaseRequest with its session metadata
    gate = asyncio.Semaphore(REGISTER_AT_ONCE)

    async def connect(call: Any) -> None:
        for attempt in range(3):  # a connection attempt lost on a loaded machine is retried, as nodes do
            async with gate:
                try:
                    await call(payload)
                    return
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                        raise

    await asyncio.gather(*(connect(c) for c in calls))
    print(json.dumps({"ready": count}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # "go": the parent has measured memory
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def caller(call: Any) -> None:
        while True:
            await asyncio.sleep(min(random.uniform(0, 2 * task_s), max(0.0, stop_at - time.monotonic())))
            if time.monotonic() >= stop_at:
                return
            started = time.perf_counter()
            await call(payload)
            latencies.append(1000 * (time.perf_counter() - started))

    await asyncio.gather(*(caller(c) for c in calls))
    await asyncio.gather(*(ch.close() for ch in channels))
    return {"lease_ms": [round(x, 3) for x in latencies]}


async def serve_parent(fleet: Fleet) -> None:
    """Register, then obey the parent's commands: mode M | mark JOB SINCE | report | stop."""
    started = time.monotonic()
    registered = await fleet.register()
    lag = asyncio.create_task(fleet.watch_lag())
    print(json.dumps({"ready": registered, "register_s": round(time.monotonic() - started, 2)}), flush=True)
    while True:
        line = (await asyncio.to_thread(sys.stdin.readline)).split()
        if not line or line[0] == "stop":
            break
        if line[0] == "mode":
            fleet.set_mode(line[1])
        elif line[0] == "mark":
            fleet.tally = Tally(job=line[1], since=float(line[2]))
        elif line[0] == "report":
            print(json.dumps(fleet.tally.report()), flush=True)
    lag.cancel()
    await fleet.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--first", type=int, default=0, help="index of this process's first node (keys differ per index)")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--task-s", type=float, default=20.0, help="mean run time of a held task")
    p.add_argument("--echo", type=float, default=0.0, help="baseline: call the echo server for this many seconds")
    p.add_argument("--lease-wait-ms", type=int, default=LEASE_WAIT_MS, help="the long poll's wait (the daemon's)")
    ns = p.parse_args()
    raise_fd_limit()
    if ns.echo:
        print(json.dumps(asyncio.run(echo_fleet(ns.target, ns.count, ns.task_s, ns.echo))), flush=True)
    else:
        asyncio.run(serve_parent(Fleet(ns.target, ns.first, ns.count, ns.task_s, ns.lease_wait_ms)))


if __name__ == "__main__":
    main()
