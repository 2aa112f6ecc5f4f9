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
import random
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from node.cache import BlobCache
from node.config import AgentConfig
from node.executor import Executor, TaskOutcome, TaskRequest
from node.pending import PendingResults
from node.serving.replica import ReplicaContext
from node.serving.stream import ServeLoop
from tensorgrid.blobs import file_sha256
from tensorgrid.crypto import Signer
from tensorgrid.errors import TensorGridError
from tensorgrid.nodeclient import NodeClient, Submitted
from tensorgrid.retry import backoff
from tensorgrid.rpc import retry_after_s
from tensorgrid.sandbox import Isolation
from tensorgrid.tls import explain_unavailable
from tensorgrid.types import BlobRef, Capabilities, ErrorKind, Lease, Receipt, TaskError

if TYPE_CHECKING:
    from node.metrics import NodeMetrics  # only with --metrics-listen: prometheus_client loads then

log = logging.getLogger("tensorgrid.node")
LEASE_WAIT_MS = 5_000
CHECKPOINTS = "checkpoints"
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
BUSY_RETRIES = 8  # calls refused as RESOURCE_EXHAUSTED (the coordinator at its limits) are retried this often
RESULT_KEEP_S = 3600.0  # a finished result is resubmitted this long while the coordinator is unreachable


@dataclass(frozen=True)
class _Timing:
    fetch_s: float  # the task's blobs into the cache (0 when they were there)
    run_s: float  # the worker's whole turn: request, program load, forward passes, output written


def checkpoint_file(step: int) -> str:
    """tensorgrid.training.inner.checkpoint_name, without importing torch into the daemon."""
    return f"step_{step:08d}.safetensors"


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
        self.executors = [self._executor(config, caps, cache) for _ in range(max(1, config.slots))]
        self.draining = asyncio.Event()
        self.completed = 0
        self._registered = asyncio.Event()
        self._active: dict[str, tuple[int, Executor]] = {}  # task_id → (attempt, executor)
        self._revoked: set[tuple[str, int]] = set()  # leases of _active the coordinator took back
        self.pending = PendingResults(config.work_dir / "pending")
        self._busy = 0  # lease calls refused in a row as RESOURCE_EXHAUSTED
        self.serving = self._serve_loop() if config.serve_replicas > 0 else None

    @staticmethod
    def _executor(config: AgentConfig, caps: Capabilities, cache: BlobCache) -> Executor:
        """A sandboxed worker slot: the memory it offers as a hard cap, reads of the blob cache,
        writes in the work directory, nothing else of this machine (where the OS allows)."""
        slots = max(1, config.slots)
        return Executor(
            memory_cap_bytes=int(caps.memory_bytes or 0) // slots,
            device=config.device,
            isolation=Isolation().with_paths(readable=[cache.root], writable=[config.work_dir]),
            scratch_root=config.work_dir / "sandbox",
        )

    def _serve_loop(self) -> ServeLoop:
        """Real-time serving (node.serving): replicas fetch through this agent's blob cache and
        sign their batch receipts with its key; their workers get the cache to read, no more."""
        isolation = Isolation().with_paths(readable=[self.cache.root])

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
            if self.pending.any():  # results an earlier run could not hand in: first, while their leases live
                await self._register_with_retry()
                await self._hand_in_kept()
            # Warm the task workers (torch import) before the first lease, not during it.
            await asyncio.gather(*(ex.start() for ex in self.executors))
            if not self._registered.is_set():
                await self._register_with_retry()
            heartbeat = asyncio.create_task(self._heartbeat_loop())
            serving = asyncio.create_task(self.serving.run()) if self.serving is not None else None
            await asyncio.gather(*(self._slot_loop(ex) for ex in self.executors))
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
        for task_id, (attempt, ex) in list(self._active.items()):
            await ex.cancel()
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
        while True:
            await asyncio.sleep(self.client.heartbeat_s)
            await self._heartbeat_once()

    async def _heartbeat_once(self) -> None:
        active = [(t, a) for t, (a, _) in self._active.items()]
        try:
            revoked = await self.client.heartbeat(active, self.draining.is_set())
        except grpc.aio.AioRpcError as e:
            await self._on_rpc_error(e, "heartbeat")
            return
        for task_id, attempt in revoked:
            entry = self._active.get(task_id)
            if entry is not None and entry[0] == attempt:
                log.warning("lease on task %s was revoked; stopping it", task_id[:12])
                self._revoked.add((task_id, attempt))
                await entry[1].cancel()

    async def _on_rpc_error(self, e: grpc.aio.AioRpcError, what: str) -> None:
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            log.info("session unknown to the coordinator (%s); registering again", what)
            self._registered.clear()
            await self._register_with_retry()
        elif e.code() in RETRYABLE:
            where = self.client.target
            log.warning("%s failed: coordinator unavailable (%s); next try: %s", what, e.code().name, where)
        else:
            log.warning("%s failed: %s: %s", what, e.code().name, e.details())

    # ---- work ----------------------------------------------------------------------------------
    async def _slot_loop(self, ex: Executor) -> None:
        # A slot long-polls LeaseTasks only when it holds nothing: the result of its task asks
        # for its next one (piggybacked leasing), so a busy slot takes one round trip per task.
        lease: Lease | None = None
        while not self.draining.is_set():
            if lease is None:
                lease = await self._lease_one()
            if lease is not None:
                lease = await self._run_task(ex, lease)
        if lease is not None:  # granted with a result as we began to drain: hand it straight back
            await self._report(lease.task_id, lease.attempt, TaskError(ErrorKind.RELEASED, "node is draining"))

    async def _lease_one(self) -> Lease | None:
        """One lease, long-polling the coordinator; None when there was none (after any wait it asked for)."""
        await self._registered.wait()
        call = asyncio.ensure_future(self.client.lease(1, wait_ms=LEASE_WAIT_MS))
        drained = asyncio.ensure_future(self.draining.wait())
        await asyncio.wait({call, drained}, return_when=asyncio.FIRST_COMPLETED)
        drained.cancel()
        if not call.done():  # draining: stop waiting for work
            call.cancel()
            return None
        try:
            leases, retry_ms = call.result()
        except grpc.aio.AioRpcError as e:
            await self._on_rpc_error(e, "lease")
            busy = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            self._busy = self._busy + 1 if busy else 0
            await self._sleep_or_drain((retry_after_s(e, self._busy) if busy else 0.5) + random.random())
            return None
        self._busy = 0
        if self.draining.is_set():  # granted as we began to drain: hand it straight back
            for lease in leases:
                await self._report(lease.task_id, lease.attempt, TaskError(ErrorKind.RELEASED, "node is draining"))
            return None
        if not leases:
            if retry_ms:
                await self._sleep_or_drain(min(retry_ms, 10_000) / 1000)
            return None
        return leases[0]

    async def _run_task(self, ex: Executor, lease: Lease) -> Lease | None:
        """Run one task and hand in its outcome; returns the slot's next lease if it came with the answer."""
        self._active[lease.task_id] = (lease.attempt, ex)
        out = self.config.work_dir / f"{lease.task_id}-{lease.attempt}.out"
        ckpt = (
            self.config.work_dir / CHECKPOINTS / f"{lease.task_id}-{lease.attempt}"
            if lease.kind == "training"
            else None
        )
        following: Lease | None = None
        try:
            outcome, timing = await self._execute(ex, lease, out, ckpt)
            if self.metrics is not None:
                self.metrics.task(lease.kind, None if outcome.ok else _kind_of(outcome), timing.run_s)
            if outcome.ok:
                # A training result may be followed by checkpoint reveals: its slot asks for work after those.
                want = 0 if ckpt is not None or self.draining.is_set() else 1
                submitted = time.monotonic()
                accepted, reveal, granted = await self._submit(lease, out, outcome.commitment, want)
                if reveal and ckpt is not None:
                    await self._reveal(lease, ckpt, reveal)
                following = granted[0] if granted else None
                for extra in granted[1:]:  # more than asked for: not this slot's
                    await self._report(extra.task_id, extra.attempt, TaskError(ErrorKind.RELEASED, "not asked for"))
                if accepted:  # with where its time went (benchmarks.scaling reads these lines)
                    log.info(
                        "task %s/%d timing: fetch %.3fs, load %.3fs, compute %.3fs, run %.3fs, submit %.3fs",
                        lease.task_id[:12],
                        lease.attempt,
                        timing.fetch_s,
                        outcome.load_seconds,
                        outcome.seconds,
                        timing.run_s,
                        time.monotonic() - submitted,
                    )
            elif outcome.error is not None:
                log.warning(
                    "task %s failed: %s: %s", lease.task_id[:12], outcome.error.kind.value, outcome.error.message[:300]
                )
                await self._report(lease.task_id, lease.attempt, outcome.error)
        finally:
            self._active.pop(lease.task_id, None)
            self._revoked.discard((lease.task_id, lease.attempt))
            out.unlink(missing_ok=True)
            if ckpt is not None:
                await asyncio.to_thread(shutil.rmtree, ckpt, True)
        return following

    async def _execute(
        self, ex: Executor, lease: Lease, out: Path, ckpt: Path | None = None
    ) -> tuple[TaskOutcome, _Timing]:
        """Fetch the task's blobs and run it; its outcome and how long each took."""
        started = time.monotonic()
        fetched, outcome = await self._fetch_and_run(ex, lease, out, ckpt)
        done = time.monotonic()
        return outcome, _Timing(fetched - started, max(0.0, done - fetched))

    async def _fetch_and_run(
        self, ex: Executor, lease: Lease, out: Path, ckpt: Path | None
    ) -> tuple[float, TaskOutcome]:
        settings = dict(lease.settings)
        try:
            model = await self.cache.ensure(lease.model, self._fetcher(lease.model)) if lease.model else None
            inputs = await self.cache.ensure(lease.input, self._fetcher(lease.input))
            # Further blobs a task names in its settings (a training round's global weights).
            extra = settings.get("blobs")
            if isinstance(extra, dict) and extra:
                paths = {}
                for name, value in extra.items():
                    ref = BlobRef(str(value["sha256"]), int(value["size"]))
                    paths[str(name)] = str(await self.cache.ensure(ref, self._fetcher(ref)))
                settings["paths"] = paths
        except (KeyError, TypeError, ValueError) as e:
            return time.monotonic(), TaskOutcome(
                ok=False, error=TaskError(ErrorKind.INVALID_INPUT, f"bad blob list in the task's settings: {e}")
            )
        except (TensorGridError, grpc.aio.AioRpcError) as e:
            msg = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            return time.monotonic(), TaskOutcome(
                ok=False,
                rows=0,
                seconds=0.0,
                error=TaskError(ErrorKind.BLOB_UNAVAILABLE, f"could not fetch inputs: {msg}"),
            )
        fetched = time.monotonic()
        wanted = str(lease.settings.get("device", "any"))
        request = TaskRequest(
            kind=lease.kind,
            model_path=str(model) if model else None,
            input_path=str(inputs),
            output_path=str(out),
            settings=settings,
            device=self.config.device if wanted == "any" else wanted,
            threads=self.config.threads,
            memory_limit_bytes=lease.memory_limit_bytes,
            time_limit_s=lease.time_limit_ms / 1000,
            checkpoint_dir=str(ckpt) if ckpt is not None else None,
        )
        return fetched, await ex.run(request)

    def _fetcher(self, ref: BlobRef) -> Callable[[int], AsyncIterator[bytes]]:
        return lambda offset: self._fetch(ref, offset)

    async def _fetch(self, ref: BlobRef, offset: int) -> AsyncIterator[bytes]:
        """FetchBlob from offset; a stream the coordinator refuses as too many is retried after its
        hint, and one cut off (a connection reset on the way: UNAVAILABLE) resumes where it broke,
        so a flaky link costs a round trip, not the task (which would go back to the queue)."""
        for failures in range(1, BUSY_RETRIES + 1):
            try:
                async for chunk in self.client.fetch(ref, offset):
                    offset += len(chunk)
                    if self.metrics is not None:
                        self.metrics.downloaded(len(chunk))
                    yield chunk
                return
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                    raise
                if failures == BUSY_RETRIES:
                    raise
                if code == grpc.StatusCode.UNAVAILABLE:
                    log.info(
                        "fetching blob %s broke off at %d bytes (%s); resuming", ref.sha256[:12], offset, e.details()
                    )
                    await asyncio.sleep(backoff(failures, 0.25, cap=2.0))
                    continue
                log.info("coordinator busy fetching blob %s; retrying", ref.sha256[:12])
                await asyncio.sleep(retry_after_s(e, failures))

    async def _submit(
        self, lease: Lease, out: Path, commitment: str = "", want: int = 0
    ) -> tuple[bool, list[int], list[Lease]]:
        """Send the result, asking for `want` next leases with it; returns whether it was accepted,
        the checkpoint steps its audit wants revealed (usually none) and the leases granted with
        the answer. The result is
        kept on disk (node.pending) until the coordinator answers for it, unless it carries a
        commitment (a training result): its audit may ask for checkpoints a restarted daemon no
        longer has."""
        output = await asyncio.to_thread(file_sha256, out)
        receipt = self.client.sign(lease, output, commitment)
        kept = None if commitment else await asyncio.to_thread(self.pending.keep, receipt, out)
        try:
            answer = await self._hand_in(receipt, kept.output if kept else out, output.size, want)
        finally:
            if kept is not None:
                await asyncio.to_thread(self.pending.drop, kept)
        if answer is None:
            return False, [], []
        return answer.accepted, answer.reveal_steps if answer.accepted else [], answer.leases

    async def _hand_in(self, receipt: Receipt, out: Path, size: int, want: int = 0) -> Submitted | None:
        """Submit a signed result until the coordinator answers; None if it is dropped unanswered:
        refused as malformed, its lease revoked, or no coordinator for RESULT_KEEP_S."""
        name = f"{receipt.task_id[:12]}/{receipt.attempt}"
        key = (receipt.task_id, receipt.attempt)
        give_up = time.monotonic() + RESULT_KEEP_S
        failures = 0
        while True:
            try:
                answer = await self.client.submit_and_lease(receipt, size, out, want)
                if self.metrics is not None:
                    self.metrics.uploaded(size)
                break
            except grpc.aio.AioRpcError as e:
                await self._on_rpc_error(e, "submit")
                failures += 1
                if e.code() not in (*RETRYABLE, grpc.StatusCode.UNAUTHENTICATED):
                    log.warning("task %s: result refused, dropped: %s", name, e.details())
                    self._count_result("dropped")
                    return None
                # A finished result is worth keeping while its lease may still be alive: a
                # coordinator that restarts keeps the lease for its TTL after our last heartbeat.
                if key in self._revoked or time.monotonic() > give_up:
                    why = "its lease ended" if key in self._revoked else f"no coordinator for {RESULT_KEEP_S:.0f} s"
                    log.warning("task %s: result dropped, %s", name, why)
                    self._count_result("dropped")
                    return None
                if failures == 1:
                    log.warning("task %s: result kept, resubmitting until it is taken", name)
                busy = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.sleep(retry_after_s(e, failures) if busy else backoff(failures, 0.25, cap=2.0))
        self._count_result("accepted" if answer.accepted else "rejected")
        if answer.accepted:
            self.completed += 1
            log.info("task %s accepted (%d done)", name, self.completed)
        else:
            log.warning("task %s rejected: %s", name, answer.reason)
        return answer

    def _count_result(self, answer: str) -> None:
        if self.metrics is not None:
            self.metrics.result(answer)

    async def _hand_in_kept(self) -> None:
        """Hand in what an earlier run of this daemon finished but could not deliver."""
        for kept in await asyncio.to_thread(self.pending.stored):
            r = kept.receipt
            log.warning("task %s/%d: handing in a result kept by an earlier run", r.task_id[:12], r.attempt)
            try:
                await self._hand_in(kept.receipt, kept.output, kept.size)
            finally:
                await asyncio.to_thread(self.pending.drop, kept)

    async def _reveal(self, lease: Lease, ckpt: Path, steps: list[int]) -> None:
        """Upload the checkpoints an audit asked for; a refused or missing one is logged, not retried."""
        for step in steps:
            path = ckpt / checkpoint_file(step)
            if not path.is_file():
                log.warning("task %s: the audit asks for step %d, which this node has no checkpoint of",
                            lease.task_id[:12], step)  # fmt: skip
                continue
            for attempt in range(3):
                try:
                    ok, reason = await self.client.reveal(lease.task_id, lease.attempt, step, path)
                except grpc.aio.AioRpcError as e:
                    await self._on_rpc_error(e, "reveal")
                    if e.code() not in (*RETRYABLE, grpc.StatusCode.UNAUTHENTICATED) or attempt == 2:
                        break
                    await asyncio.sleep(backoff(attempt + 1, 0.5))
                    continue
                if self.metrics is not None:
                    self.metrics.audits.inc()
                    self.metrics.uploaded(path.stat().st_size)
                if not ok:
                    log.warning("task %s: checkpoint %d refused: %s", lease.task_id[:12], step, reason)
                break
        log.info("task %s/%d: revealed checkpoints %s for its audit", lease.task_id[:12], lease.attempt, steps)

    async def _report(self, task_id: str, attempt: int, error: TaskError, timeout: float | None = None) -> None:
        for failures in range(1, BUSY_RETRIES + 1):
            try:
                await self.client.report(task_id, attempt, error, timeout)
                return
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or failures == BUSY_RETRIES:
                    log.warning("could not report the failure of task %s: %s", task_id[:12], e.details())
                    return
                await asyncio.sleep(retry_after_s(e, failures))


def _kind_of(outcome: TaskOutcome) -> ErrorKind:
    return outcome.error.kind if outcome.error is not None else ErrorKind.EXECUTION


def _counting(send: Callable[..., None], metrics: NodeMetrics) -> Callable[..., None]:
    """The serve stream's send, counting each final reply (answered, or failed with an error)."""

    def counted(up: Any) -> None:
        for r in up.replies:
            if r.done:
                metrics.served(not r.HasField("error"))
        send(up)

    return counted
