"""Run tasks in a supervised, sandboxed child process (node.worker) with time and memory limits.

The daemon never runs a workload in its own process: a hostile or broken model can only
take down the child, which is killed (its whole process group) and replaced on the next
task. The child starts through tensorgrid.sandbox: a scrubbed environment (no password, no
daemon settings), its own scratch directory, no network, no files of the node's but those
of the task at hand where the OS allows (lend=True: node.lending), and a hard address-space
cap at the memory this slot offers (CUDA: a per-process memory fraction instead). Within
that, each task's own limit is enforced by polling the child's peak RSS, with a per-task
RLIMIT_AS soft cap on CPU as a backstop (see node.worker). This module keeps the worker (started,
warmed, replaced); node.supervision runs each task in it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from node.child import WorkerChild
from node.spawn import WorkerStartError, spawn_worker
from node.supervision import Supervisor, TaskOutcome, TaskRequest
from tensorgrid.sandbox import Isolation
from tensorgrid.types import ErrorKind

__all__ = ["Executor", "TaskOutcome", "TaskRequest"]

log = logging.getLogger("tensorgrid.node.executor")

STDERR_TAIL_BYTES = 4096
WORKER_ENTRY = "node.worker"
LIGHT_ENTRY = "node.light_worker"  # node.worker without torch, for LIGHT_KINDS
LIGHT_KINDS = frozenset({"noop"})  # node.worker.LIGHT_KINDS (this module does not import the worker's)


class Executor:
    """Runs one task at a time in a warm child process; every failure becomes a TaskOutcome."""

    def __init__(
        self,
        *,
        worker_argv: Sequence[str] | None = None,
        start_timeout_s: float = 120.0,
        poll_interval_s: float = 0.1,
        stderr_tail_bytes: int = STDERR_TAIL_BYTES,
        memory_cap_bytes: int = 0,
        device: str = "auto",
        isolation: Isolation | None = None,
        scratch_root: Path | None = None,
        entry: str = WORKER_ENTRY,
        lend: bool = False,
    ) -> None:
        """worker_argv replaces the sandboxed `node.worker` (tests use it to run hostile workers;
        they still get the scrubbed environment and a scratch directory).

        memory_cap_bytes: the hard memory cap of every worker (what this slot offers; 0: none).
        isolation: what the worker keeps of the machine; default: no network, files unconfined
        (the daemon confines them all, and lends each task its files: lend).
        scratch_root: where workers' scratch directories are made (default: the system's temp).
        entry: the module the sandbox boots (node.serving's worker reuses this spawn machinery).
        lend: the worker reads and writes no directory of the node's (give it none in isolation):
        each task's files are lent to it for that task only, and its outputs moved out after
        (node.lending). The daemon's task workers run so.
        """
        self._argv = list(worker_argv) if worker_argv else None
        self._entry = entry
        self._lend = lend
        self._memory_cap = memory_cap_bytes
        self._device = device
        self._isolation = isolation or Isolation(confine_files=False)
        self._scratch_root = scratch_root
        self._start_timeout_s = start_timeout_s
        self._poll_interval_s = poll_interval_s  # node.serving's workers poll their memory so too
        self._tail_bytes = stderr_tail_bytes
        self._child: WorkerChild | None = None
        self._lock = asyncio.Lock()
        self._cancelled = asyncio.Event()
        self._supervisor = Supervisor(self._cancelled, poll_interval_s)  # each task in the worker (node.supervision)
        self._running = False
        self._closed = False
        self._torch = False  # a task (or start()) needed torch: every worker from then on has it
        self._warming: asyncio.Future[None] | None = None  # warm_up's start in the background

    @property
    def pid(self) -> int | None:
        """Process id of the current worker, if one is running."""
        return self._child.pid if self._child is not None and self._child.alive else None

    async def start(self) -> None:
        """Start the worker (with torch) ahead of the first task. Without it, the first task
        starts the worker it needs: node.light_worker for LIGHT_KINDS, else node.worker (the start
        is not charged to the task's time limit)."""
        async with self._lock:
            await self._ensure_child(0, light=False)

    def warm_up(self, kind: str) -> None:
        """A task of `kind` is coming (its lease arrived; its blobs are on their way): start the
        worker it needs now, in the background, so its start (torch's import, seconds) overlaps
        the fetch instead of following it. Nothing when the right worker runs or a task does."""
        light = kind in LIGHT_KINDS
        child = self._child
        if self._closed or self._running or self._lock.locked() or self._warming is not None:
            return
        if child is not None and child.alive and (light or not child.light):
            return
        self._warming = asyncio.ensure_future(self._warm(light))

    async def _warm(self, light: bool) -> None:
        try:
            async with self._lock:
                if not self._closed:
                    await self._ensure_child(0, light=light)
        except Exception as e:  # noqa: BLE001 - the task's own start tries again and reports it
            log.info("warming a worker up failed (the task will start one): %s", e)
        finally:
            self._warming = None

    async def run(self, request: TaskRequest) -> TaskOutcome:
        """Run one task under its limits. Never raises for anything the child does."""
        async with self._lock:
            if self._closed:
                return TaskOutcome.failed(ErrorKind.RELEASED, "the executor is closed")
            self._cancelled.clear()
            self._running = True
            try:
                warm = self._child is not None and self._child.alive
                outcome = await self._attempt(request)
                if warm and outcome.error is not None and outcome.error.kind == ErrorKind.OUT_OF_MEMORY:
                    # Its worker held other tasks' programs: a fresh one holds only torch, as the
                    # referee's measure of a memory claim does (coordinator: services.verification.memory).
                    log.info("the task ran out of memory in a warm worker; running it again in a fresh one")
                    if self._child is not None:
                        await self._child.kill_and_wait()
                    outcome = await self._attempt(request)
                return outcome
            except WorkerStartError as exc:
                return TaskOutcome.failed(ErrorKind.CRASHED, str(exc))
            finally:
                self._running = False

    async def _attempt(self, request: TaskRequest) -> TaskOutcome:
        child = await self._ensure_child(request.memory_limit_bytes, light=request.kind in LIGHT_KINDS)
        return await self._supervisor.run(child, request)

    async def cancel(self) -> None:
        """Kill the running task's child now; its run() returns RELEASED. No-op when idle.
        A task whose worker is still starting is released as soon as it has started."""
        if self._running:
            self._cancelled.set()
            if self._child is not None:
                self._child.kill()

    async def close(self, timeout_s: float = 1.0) -> None:
        """Cancel any running task and stop the worker: EOF first, SIGKILL after timeout_s.

        The worker holds nothing worth saving, and tearing torch down can take seconds on a
        loaded machine, so the grace is short: a node stops at once either way."""
        self._closed = True
        await self.cancel()
        async with self._lock:
            child, self._child = self._child, None
            if child is None or not child.alive:
                if child is not None:  # it died on its own: its directories are still there
                    child.close_dirs()
                return
            assert child.proc.stdin is not None
            child.proc.stdin.close()
            try:
                await asyncio.wait_for(child.proc.wait(), timeout_s)
            except TimeoutError:
                log.debug("worker %d did not exit within %.1fs of EOF; killing it", child.pid, timeout_s)
            await child.kill_and_wait()

    async def _ensure_child(self, memory_limit: int, *, light: bool = False) -> WorkerChild:
        """The live worker for a task, started if none runs. light: the task needs no torch, so
        a new worker may be node.light_worker, until a task needed torch (no flip-flopping:
        each switch costs torch's import); a light one is replaced for a task that needs torch."""
        self._torch = self._torch or not light
        child = self._child
        if child is not None and child.alive and child.light and not light:
            log.info("worker %d has no torch; starting one that does", child.pid)
            await child.kill_and_wait()  # it holds nothing: no program, no task
        if child is not None and child.alive and memory_limit > 0:
            child.reset_peak()
            if child.peak_rss() > memory_limit:
                # Warm programs alone exceed this task's budget: a fresh child starts smaller.
                log.info("worker %d holds more than the task's memory limit; restarting it", child.pid)
                await child.kill_and_wait()
        if child is None or not child.alive:
            if child is not None:
                child.close_dirs()
            # A hostile test worker (argv) or another entry (node.serving's) is never swapped.
            light = not self._torch and self._argv is None and self._entry == WORKER_ENTRY
            self._child = child = await self._spawn(light)
        return child

    async def _spawn(self, light: bool = False) -> WorkerChild:
        return await spawn_worker(
            LIGHT_ENTRY if light else self._entry,
            argv=self._argv,
            light=light,
            lend=self._lend,
            isolation=self._isolation,
            scratch_root=self._scratch_root,
            memory_cap=self._memory_cap,
            device=self._device,
            start_timeout_s=self._start_timeout_s,
            tail_bytes=self._tail_bytes,
        )
