"""The node agent: register, heartbeat, lease, execute, sign and submit — one asyncio loop.

The agent only dials out, so a node behind NAT works. It survives a coordinator restart
(it retries with backoff and registers again when its session is unknown) and, given several
replicas of one coordinator, the death of one (its calls move to the next, tensorgrid.failover).
It never runs a workload in its own process, and drains on the first SIGTERM.

A training task's checkpoints stay in work_dir/checkpoints/<task>-<attempt> until the
coordinator's answer to the result arrives; the ones it asks for are revealed
(RevealCheckpoint), then the directory goes. Leftovers of a previous run are deleted at
start: a restarted node cannot reveal them (its audits then fail, which costs it the pay
and reputation of those results, never a slash).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc

from node.cache import BlobCache
from node.config import AgentConfig
from node.executor import Executor
from node.fetching import BlobFetcher
from node.handin import BUSY_RETRIES, RESULT_KEEP_S, RETRYABLE, HandIn, checkpoint_file
from node.host import Cancel
from node.pending import PendingResults
from node.serving.replica import ReplicaContext
from node.serving.stream import ServeLoop
from node.slot import CHECKPOINTS, Slot
from tensorgrid.crypto import Signer
from tensorgrid.errors import TensorGridError
from tensorgrid.heartbeats import HeartbeatClock
from tensorgrid.nodeclient import NodeClient
from tensorgrid.retry import backoff
from tensorgrid.sandbox import Isolation
from tensorgrid.tls import explain_unavailable
from tensorgrid.types import BlobRef, Capabilities, ErrorKind, TaskError

if TYPE_CHECKING:
    from node.metrics import NodeMetrics  # only with --metrics-listen: prometheus_client loads then

log = logging.getLogger("tensorgrid.node")
# Heartbeats sent and not yet answered (each ends at the RPC timeout, 30 s): at the default 5 s
# interval the timeout binds first; at a test grid's 0.3 s, 16 beats span 4.8 s of answers
# queued behind a fetch. Well inside the coordinator's calls per node (--max-node-calls, 64).
MAX_BEATS_IN_FLIGHT = 16
__all__ = ["BUSY_RETRIES", "CHECKPOINTS", "RESULT_KEEP_S", "RETRYABLE", "Agent", "checkpoint_file"]


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        signer: Signer,
        caps: Capabilities,
        cache: BlobCache,
        metrics: NodeMetrics | None = None,
    ) -> None:
        """metrics: counted into when given (--metrics-listen); None: nothing is counted."""
        self.config = config
        self.metrics = metrics
        self.caps = caps
        self.cache = cache
        self.client = NodeClient(
            config.coordinator, signer, config.rpc_timeout_s, tls=config.tls, expected_domain=config.domain
        )
        self.executors = [self._executor(config, caps) for _ in range(max(1, config.slots))]
        self.draining = asyncio.Event()
        self.completed = 0
        self._registered = asyncio.Event()
        self._registering = asyncio.Lock()
        self._beat_failed = -1  # the replica generation a heartbeat last failed under
        # Leases held (running, held ahead, or their result on its way): task_id → (attempt, how
        # to stop it if the coordinator revokes it). Heartbeats keep each of them alive.
        self._active: dict[str, tuple[int, Cancel]] = {}
        self._revoked: set[tuple[str, int]] = set()  # leases of _active the coordinator took back
        self.pending = PendingResults(config.work_dir / "pending")
        self.fetcher = BlobFetcher(self)
        self.handin = HandIn(self)
        self._busy = 0  # lease calls refused in a row as RESOURCE_EXHAUSTED
        self.serving = self._serve_loop() if config.serve_replicas > 0 else None

    @staticmethod
    def _executor(config: AgentConfig, caps: Capabilities) -> Executor:
        """A sandboxed worker slot: the memory it offers as a hard cap; of this machine (where the
        OS allows) only the files of the task at hand, lent for that task (node.lending): neither
        the blob cache (other jobs' blobs) nor the work directory (other tasks' results)."""
        slots = max(1, config.slots)
        return Executor(
            memory_cap_bytes=int(caps.memory_bytes or 0) // slots,
            device=config.device,
            isolation=Isolation(),
            scratch_root=config.work_dir / "sandbox",
            lend=True,
        )

    def _serve_loop(self) -> ServeLoop:
        """Real-time serving (node.serving): replicas fetch through this agent's blob cache and
        sign their batch receipts with its key; their workers read their program's file while they
        load it (lent for the load, node.lending), nothing else of this machine."""
        isolation = Isolation()

        def context(send: Callable[..., None]) -> ReplicaContext:
            return ReplicaContext(
                fetch=lambda ref: self.cache.ensure(ref, self._fetcher(ref)),
                sign=self.client.sign_batch,
                send=send if self.metrics is None else _counting(send, self.metrics),
                device=self.config.device,
                threads=self.config.threads,
                isolation=isolation,
                scratch_root=self.config.work_dir / "sandbox",
                memory_cap_bytes=int(self.caps.memory_bytes or 0),
                lend=True,
            )

        replicas = self.config.serve_replicas
        return ServeLoop(self.client, replicas, context, self._registered, self.draining, self._on_rpc_error)

    # ---- lifecycle -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Work until drained. Returns after in-flight tasks are finished or released."""
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        # Checkpoints of a previous run: their results can no longer be revealed.
        shutil.rmtree(self.config.work_dir / CHECKPOINTS, ignore_errors=True)
        try:
            # Results an earlier run could not hand in: first, while their leases live, and before
            # the first heartbeat, which gives the earlier run's other leases back (repositories.heartbeats).
            if self.pending.any():
                await self._register_with_retry()
                await self.handin.hand_in_kept()
            if self.config.worker_start == "boot":
                # Warm the task workers (torch's import) before the first lease, not during it.
                await asyncio.gather(*(ex.start() for ex in self.executors))
            # Else they start with the first task (not charged to its time limit; a lease warms
            # its worker up while its blobs come): a node whose tasks need no torch never imports it.
            if not self._registered.is_set():
                await self._register_with_retry()
            heartbeat = asyncio.create_task(self._heartbeat_loop())
            serving = asyncio.create_task(self.serving.run()) if self.serving is not None else None
            await asyncio.gather(*(Slot(self, ex).run() for ex in self.executors))
            if serving is not None:  # ends on drain, its replicas released
                await serving
            heartbeat.cancel()
            await self._heartbeat_once()  # tell the coordinator we are draining / gone
        finally:
            for ex in self.executors:
                await ex.close()
            await self.client.close()

    def drain(self) -> None:
        """Stop taking work; finish what is running."""
        if not self.draining.is_set():
            log.info("draining: finishing %d running task(s), taking no new work", len(self._active))
            self.draining.set()

    async def abort(self) -> None:
        """Second signal: kill running tasks now and give their leases back."""
        for task_id, (attempt, cancel) in list(self._active.items()):
            await cancel()
            await self._report(task_id, attempt, TaskError(ErrorKind.RELEASED, "node is shutting down"), 2.0)

    # ---- session -------------------------------------------------------------------------------
    async def _register_with_retry(self) -> None:
        failures = 0
        while not self.draining.is_set():
            try:
                await self.client.register(self.caps)
                self._registered.set()
                log.info(
                    "registered with %s as %s (%s)",
                    self.client.target,
                    self.client.signer.address,
                    self.caps.device_kind,
                )
                return
            except grpc.aio.AioRpcError as e:
                if e.code() not in RETRYABLE:
                    raise TensorGridError(f"the coordinator refused registration: {e.details()}") from None
                failures += 1
                delay = backoff(failures, 0.2, cap=5.0)
                why = explain_unavailable(e.details() or e.code().name, self.client.target, self.config.tls)
                log.warning("%s; retrying in %.1fs", why, delay)
            await self._sleep_or_drain(delay)

    async def _sleep_or_drain(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.draining.wait(), seconds)
        except TimeoutError:
            pass

    async def _heartbeat_loop(self) -> None:
        """Beats at the interval the coordinator gives: its Register interval while this node holds
        leases or drains, the longer idle one its heartbeat answers give while it holds none, each
        counted from when the last was due, at this node's own phase (tensorgrid.heartbeats).

        A beat goes out when it is due whether or not the one before has been answered (at most
        MAX_BEATS_IN_FLIGHT at once): on a slow link the answers come back behind whatever the
        coordinator is sending down the same connection (a program being fetched), seconds on a
        full queue, while the beats themselves travel up an idle direction. Waiting for each
        answer let the leases lapse during every large fetch (each lapse a failure charged to
        the task and the node)."""
        clock = HeartbeatClock(self.client, time.monotonic())  # its own phase (tensorgrid.heartbeats)
        beats: set[asyncio.Task[None]] = set()
        try:
            while True:
                room = len(beats) < MAX_BEATS_IN_FLIGHT  # none: not a beat's time to spin on
                await asyncio.sleep(clock.sleep_s(time.monotonic()) if room else self.client.heartbeat_s)
                holding = bool(self._active) or self.draining.is_set()
                if len(beats) < MAX_BEATS_IN_FLIGHT and clock.due(time.monotonic(), holding):
                    beat = asyncio.create_task(self._heartbeat_once())
                    beats.add(beat)
                    beat.add_done_callback(beats.discard)
        finally:
            for beat in beats:
                beat.cancel()

    async def _heartbeat_once(self) -> None:
        active = [(t, a) for t, (a, _) in self._active.items()]
        generation = self.client.targets.generation
        try:
            revoked = await self.client.heartbeat(active, self.draining.is_set())
        except grpc.aio.AioRpcError as e:
            if e.code() in RETRYABLE and generation == self._beat_failed:
                return  # beats in flight together fail together: one of them says so
            self._beat_failed = generation
            await self._on_rpc_error(e, "heartbeat")
            return
        self._beat_failed = -1  # the next failure is news again
        for task_id, attempt in revoked:
            entry = self._active.get(task_id)
            if entry is not None and entry[0] == attempt and (task_id, attempt) not in self._revoked:
                log.warning("lease on task %s was revoked; stopping it", task_id[:12])
                self._revoked.add((task_id, attempt))
                await entry[1]()

    async def _on_rpc_error(self, e: grpc.aio.AioRpcError, what: str) -> None:
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            token = self.client.token
            async with self._registering:  # calls refused together register once
                if self.client.token != token and self._registered.is_set():
                    return
                log.info("session unknown to the coordinator (%s); registering again", what)
                self._registered.clear()
                await self._register_with_retry()
        elif e.code() in RETRYABLE:
            where = self.client.target
            log.warning("%s failed: coordinator unavailable (%s); next try: %s", what, e.code().name, where)
        else:
            log.warning("%s failed: %s: %s", what, e.code().name, e.details())

    # ---- work (node.slot, node.fetching, node.handin) ------------------------------------------
    def _fetcher(self, ref: BlobRef) -> Callable[[int], AsyncIterator[bytes]]:
        return self.fetcher.fetcher(ref)

    async def _report(self, task_id: str, attempt: int, error: TaskError, timeout: float | None = None) -> None:
        await self.handin.report(task_id, attempt, error, timeout)


def _counting(send: Callable[..., None], metrics: NodeMetrics) -> Callable[..., None]:
    """The serve stream's send, counting each final reply (answered, or failed with an error)."""

    def counted(up: Any) -> None:
        for r in up.replies:
            if r.done:
                metrics.served(not r.HasField("error"))
        send(up)

    return counted
