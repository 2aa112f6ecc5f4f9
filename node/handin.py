"""Handing results in: sign, keep on disk until answered (node.pending), submit with retries,
reveal training checkpoints an audit asks for, report failures, and deliver what an earlier
run of the daemon kept.

A finished result is resubmitted until the coordinator answers for it (accepted, rejected, or
refused as not worth retrying), or for RESULT_KEEP_S with no coordinator. One whose lease a
heartbeat said was revoked is still handed in: a lease that expired, or that a restart left
behind, still takes its node's result while nobody else's is in (coordinator: tasks.lost_lease),
and the coordinator, not the node, knows whether that is so. It only ever sends this node's own
signed receipt again; the coordinator refuses what it may not take (never paid twice).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc

from node.host import Host
from tensorgrid.blobs import file_sha256
from tensorgrid.nodeclient import Submitted
from tensorgrid.retry import backoff
from tensorgrid.rpc import retry_after_s
from tensorgrid.types import Lease, Receipt, TaskError

log = logging.getLogger("tensorgrid.node")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
BUSY_RETRIES = 8  # calls refused as RESOURCE_EXHAUSTED (the coordinator at its limits) are retried this often
RESULT_KEEP_S = 3600.0  # a finished result is resubmitted this long while the coordinator is unreachable
REVEAL_KEEP_S = 600.0  # a checkpoint an audit asked for is sent again this long while no coordinator takes it


def checkpoint_file(step: int) -> str:
    """tensorgrid.training.inner.checkpoint_name, without importing torch into the daemon."""
    return f"step_{step:08d}.safetensors"


class HandIn:
    """The agent's results on their way to the coordinator (the agent's client, session and
    revoked leases are read through it, so a client swapped in later is the one used)."""

    def __init__(self, agent: Host) -> None:
        self.agent = agent

    async def submit(
        self, lease: Lease, out: Path, commitment: str = "", want: int = 0
    ) -> tuple[bool, list[int], list[Lease]]:
        """Send the result, asking for `want` next leases with it; returns whether it was accepted,
        the checkpoint steps its audit wants revealed (usually none) and the leases granted with
        the answer. The result is kept on disk (node.pending) until the coordinator answers for
        it, unless it carries a commitment (a training result): its audit may ask for checkpoints
        a restarted daemon no longer has."""
        a = self.agent
        output = await asyncio.to_thread(file_sha256, out)
        receipt = a.client.sign(lease, output, commitment)
        kept = None if commitment else await asyncio.to_thread(a.pending.keep, receipt, out)
        try:
            answer = await self.hand_in(receipt, kept.output if kept else out, output.size, want)
        finally:
            if kept is not None:
                await asyncio.to_thread(a.pending.drop, kept)
        if answer is None:
            return False, [], []
        return answer.accepted, answer.reveal_steps if answer.accepted else [], answer.leases

    async def hand_in(self, receipt: Receipt, out: Path, size: int, want: int = 0) -> Submitted | None:
        """Submit a signed result until the coordinator answers; None if it is dropped unanswered:
        refused as malformed (any code not worth retrying), or no coordinator for RESULT_KEEP_S.
        A lease revoked meanwhile does not end it: the coordinator decides whether the result
        still counts (a lease lost by expiry or a restart), and answers either way."""
        a = self.agent
        name = f"{receipt.task_id[:12]}/{receipt.attempt}"
        key = (receipt.task_id, receipt.attempt)
        give_up = time.monotonic() + RESULT_KEEP_S
        failures, told = 0, False  # told: the log says the lease was revoked
        while True:
            try:
                answer = await a.client.submit_and_lease(receipt, size, out, want)
                if a.metrics is not None:
                    a.metrics.uploaded(size)
                break
            except grpc.aio.AioRpcError as e:
                await a._on_rpc_error(e, "submit")
                failures += 1
                if e.code() not in (*RETRYABLE, grpc.StatusCode.UNAUTHENTICATED):
                    log.warning("task %s: result refused, dropped: %s", name, e.details())
                    self.count("dropped")
                    return None
                # Kept even once a heartbeat says the lease was revoked (a coordinator back after
                # the lease expired): its result may still count, and only the coordinator knows.
                if time.monotonic() > give_up:
                    log.warning("task %s: result dropped, no coordinator for %.0f s", name, RESULT_KEEP_S)
                    self.count("dropped")
                    return None
                if failures == 1:
                    log.warning("task %s: result kept, resubmitting until it is answered", name)
                if key in a._revoked and not told:
                    told = True
                    log.warning("task %s: its lease was revoked; handing the result in anyway", name)
                busy = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.sleep(retry_after_s(e, failures) if busy else backoff(failures, 0.25, cap=2.0))
        self.count("accepted" if answer.accepted else "rejected")
        if answer.accepted:
            a.completed += 1
            log.info("task %s accepted (%d done)", name, a.completed)
        else:
            log.warning("task %s rejected: %s", name, answer.reason)
        return answer

    def count(self, answer: str) -> None:
        if self.agent.metrics is not None:
            self.agent.metrics.result(answer)

    async def hand_in_kept(self) -> None:
        """Hand in what an earlier run of this daemon finished but could not deliver."""
        pending = self.agent.pending
        for kept in await asyncio.to_thread(pending.stored):
            r = kept.receipt
            log.warning("task %s/%d: handing in a result kept by an earlier run", r.task_id[:12], r.attempt)
            try:
                await self.hand_in(kept.receipt, kept.output, kept.size)
            finally:
                await asyncio.to_thread(pending.drop, kept)

    async def reveal(self, lease: Lease, ckpt: Path, steps: list[int]) -> None:
        """Upload the checkpoints an audit asked for; a refused or missing one is logged, not retried.
        One the coordinator does not answer for is retried for REVEAL_KEEP_S: its audit holds the
        round open until it comes or the round's deadline passes (a replica dying, one busy)."""
        a = self.agent
        revealed = []
        for step in steps:
            path = ckpt / checkpoint_file(step)
            if not path.is_file():
                log.warning("task %s: the audit asks for step %d, which this node has no checkpoint of",
                            lease.task_id[:12], step)  # fmt: skip
                continue
            give_up, failures = time.monotonic() + REVEAL_KEEP_S, 0
            while True:
                try:
                    ok, reason = await a.client.reveal(lease.task_id, lease.attempt, step, path)
                except grpc.aio.AioRpcError as e:
                    await a._on_rpc_error(e, "reveal")
                    failures += 1
                    if e.code() not in (*RETRYABLE, grpc.StatusCode.UNAUTHENTICATED) or time.monotonic() > give_up:
                        log.warning("task %s: checkpoint %d not revealed: %s", lease.task_id[:12], step, e.details())
                        break
                    busy = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(retry_after_s(e, failures) if busy else backoff(failures, 0.25, cap=2.0))
                    continue
                if a.metrics is not None:
                    a.metrics.audits.inc()
                    a.metrics.uploaded(path.stat().st_size)
                if ok:
                    revealed.append(step)
                else:
                    log.warning("task %s: checkpoint %d refused: %s", lease.task_id[:12], step, reason)
                break
        log.info("task %s/%d: revealed checkpoints %s for its audit", lease.task_id[:12], lease.attempt, revealed)

    async def report(self, task_id: str, attempt: int, error: TaskError, timeout: float | None = None) -> None:
        """Tell the coordinator a lease ends without a result (failed, or given back)."""
        for failures in range(1, BUSY_RETRIES + 1):
            try:
                await self.agent.client.report(task_id, attempt, error, timeout)
                return
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or failures == BUSY_RETRIES:
                    log.warning("could not report the failure of task %s: %s", task_id[:12], e.details())
                    return
                await asyncio.sleep(retry_after_s(e, failures))
