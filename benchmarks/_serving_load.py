"""The closed-loop clients of `benchmarks.serving` (and `benchmarks.serving_ab`): each sends its
next request when the last is answered, and what they saw, summed up."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import grpc

from tensorgrid.infer_stream import InferStream
from tensorgrid.session import CoordinatorError
from tensorgrid.tls import ClientTls, open_channel
from tensorgrid.v1 import serving_pb2, submit_pb2_grpc

__all__ = ["closed_loop", "summary"]


async def closed_loop(
    target: str,
    metadata: tuple[tuple[str, str], ...],
    endpoint: str,
    data: bytes,
    clients: int,
    seconds: float,
    tls: ClientTls | None = None,
    during: Any = None,
    stream: bool = False,
    stamps: list[tuple[int, int]] | None = None,
) -> tuple[list[float], list[str]]:
    """`clients` callers, each sending its next request when the last is answered, for
    `seconds` after a short warm-up; returns the latencies (ms) and the errors seen.
    stream: the requests go on one open InferStream as the SDK sends them
    (tensorgrid.infer_stream: a unary Infer when the stream cannot take one); else unary Infer.
    stamps: each measured request's (sent, answered) perf_counter_ns are appended to it."""
    channel = open_channel(target, tls or ClientTls(), aio=True)
    stub = submit_pb2_grpc.SubmitterServiceStub(channel)

    # Each request carries a fresh request_key, as the SDK's do (tensorgrid.endpoints, aio): the
    # coordinator keeps keyed answers for repeats, and that is the path callers take.
    def request() -> serving_pb2.InferRequest:
        return serving_pb2.InferRequest(endpoint_id=endpoint, input=data, timeout_ms=10_000, request_key=os.urandom(16))

    latencies: list[float] = []
    errors: list[str] = []
    warm_until = time.monotonic() + min(1.0, seconds / 4)
    stop_at = warm_until + seconds

    async def session() -> tuple[tuple[str, str], ...]:
        return metadata

    streamed = InferStream(stub, session) if stream else None

    async def call() -> None:
        req = request()
        if streamed is None or await streamed.infer(req, 10) is None:
            await stub.Infer(req, metadata=metadata, timeout=10)

    async def caller() -> None:
        while (now := time.monotonic()) < stop_at:
            started_ns = time.perf_counter_ns()
            try:
                await call()
            except (grpc.aio.AioRpcError, CoordinatorError) as e:
                code = e.code if isinstance(e, CoordinatorError) else e.code()
                errors.append(f"{code.name}: {e if isinstance(e, CoordinatorError) else e.details()}")
                await asyncio.sleep(0.01)
                continue
            if now >= warm_until:
                ended_ns = time.perf_counter_ns()
                latencies.append((ended_ns - started_ns) / 1e6)
                if stamps is not None:
                    stamps.append((started_ns, ended_ns))

    if during is not None:
        asyncio.get_running_loop().call_later(seconds / 3 + (warm_until - time.monotonic()), during)
    await asyncio.gather(*(caller() for _ in range(clients)))
    if streamed is not None:
        await streamed.close()
    await channel.close()
    return latencies, errors


def summary(latencies: list[float], errors: list[str], seconds: float) -> dict[str, Any]:
    """p50, p99 (ms) and requests per second of `seconds` of closed-loop load."""
    latencies = sorted(latencies)

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 3) if latencies else float("nan")

    return {
        "requests": len(latencies),
        "per_s": round(len(latencies) / seconds, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": len(errors),
        "first_errors": errors[:3],
    }
