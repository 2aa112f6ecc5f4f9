"""Supervising one task in a started worker (node.executor's child): its files lent to it for the
run (node.lending), the request sent over its stdin, and the first of its reply, its memory limit
(the child's peak RSS polled), its time limit or a cancellation ending the wait; a worker that
broke the protocol or died becomes a CRASHED outcome with the tail of its stderr. Every failure is
a TaskOutcome: nothing the child does raises here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from node.child import WorkerChild
from node.lending import TaskDesk
from tensorgrid.sandbox.lending import rewrite
from tensorgrid.types import ErrorKind, TaskError


@dataclass(frozen=True)
class TaskRequest:
    """One task for the worker. Limits of 0 mean "no limit"; paths are local files."""

    kind: str
    model_path: str | None
    input_path: str
    output_path: str
    settings: Mapping[str, object] = field(default_factory=dict)
    device: str = "auto"
    threads: int = 0
    memory_limit_bytes: int = 0
    time_limit_s: float = 0.0
    checkpoint_dir: str | None = None  # training: keep the checkpoints here, for reveals


@dataclass(frozen=True)
class TaskOutcome:
    """What happened to a task: rows and forward seconds on success, else a typed error.

    load_seconds: time the worker spent loading the task's program (0 when it was warm).
    cpu_seconds: the worker's CPU time for the task, the program's load left out.
    commitment: a training task's final checkpoint-chain hash, for the receipt ("" otherwise)."""

    ok: bool
    rows: int = 0
    seconds: float = 0.0
    error: TaskError | None = None
    commitment: str = ""
    load_seconds: float = 0.0
    cpu_seconds: float = 0.0

    @classmethod
    def failed(cls, kind: ErrorKind, message: str) -> TaskOutcome:
        return cls(ok=False, error=TaskError(kind, message))


class Supervisor:
    """Runs tasks, one at a time, in the workers it is given; `cancelled` set ends the running one
    (its worker killed: RELEASED)."""

    def __init__(self, cancelled: asyncio.Event, poll_interval_s: float = 0.1) -> None:
        self._cancelled = cancelled
        self._poll_interval_s = poll_interval_s
        self._seq = 0

    async def run(self, child: WorkerChild, request: TaskRequest) -> TaskOutcome:
        """The task in `child`, through its desk when it has one (lend=True)."""
        if child.desk is not None:
            return await self._lent(child, child.desk, request)
        return await self._run(child, request)

    async def _lent(self, child: WorkerChild, desk: TaskDesk, request: TaskRequest) -> TaskOutcome:
        """The task with its files lent to the worker for its run only, and its outputs moved
        where the request wants them once it succeeded (node.lending); taken back however it
        ends (a failure, a limit, a kill: a killed child's desk is deleted with it)."""
        reads = reads_of(request)
        writes = [request.output_path, *([request.checkpoint_dir] if request.checkpoint_dir else [])]
        try:  # links are made on the loop (a thread's round trip costs more than they do), copies off it
            if desk.links(reads):
                lent, outs = desk.lend(reads, writes)
            else:
                lent, outs = await asyncio.to_thread(desk.lend, reads, writes)
        except OSError as e:
            return TaskOutcome.failed(ErrorKind.BLOB_UNAVAILABLE, f"the task's files could not be lent to it: {e}")
        outcome = TaskOutcome.failed(ErrorKind.RELEASED, "the task was cancelled")
        try:
            at_desk = replace(
                request,
                model_path=lent[request.model_path] if request.model_path is not None else None,
                input_path=lent[request.input_path],
                output_path=outs[request.output_path],
                settings=rewrite(dict(request.settings), lent),
                checkpoint_dir=outs[request.checkpoint_dir] if request.checkpoint_dir else None,
            )
            outcome = await self._run(child, at_desk)
        finally:
            if request.checkpoint_dir:  # a training task's checkpoints: deleted off the loop
                await asyncio.to_thread(desk.take_back, lent, outs, outcome.ok)
            else:  # unlinks and a rename
                desk.take_back(lent, outs, outcome.ok)
        return outcome

    async def _run(self, child: WorkerChild, request: TaskRequest) -> TaskOutcome:
        self._seq += 1
        task_id = str(self._seq)
        if not await self._send(child, task_id, request):
            return await crashed(child, "the worker was gone before the task was sent")
        assert child.proc.stdout is not None
        reply = asyncio.create_task(child.proc.stdout.readline())
        watch = asyncio.create_task(self._watch_memory(child, request.memory_limit_bytes))
        cancelled = asyncio.create_task(self._cancelled.wait())
        timeout = request.time_limit_s if request.time_limit_s > 0 else None
        try:
            done, _ = await asyncio.wait({reply, watch, cancelled}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            for task in (reply, watch, cancelled):
                task.cancel()
        if cancelled in done:
            await child.kill_and_wait()
            return TaskOutcome.failed(ErrorKind.RELEASED, "the task was cancelled")
        if watch in done and not watch.cancelled():
            await child.kill_and_wait()
            return over_memory(watch.result(), request.memory_limit_bytes)
        if reply not in done:
            await child.kill_and_wait()
            return TaskOutcome.failed(ErrorKind.TIMEOUT, f"the task exceeded its time limit of {timeout:g}s")
        try:
            line = reply.result()
        except (ValueError, asyncio.LimitOverrunError):
            return await crashed(child, "the worker wrote an overlong response line", kill=True)
        return await self._parse_reply(child, task_id, line, request.memory_limit_bytes)

    async def _send(self, child: WorkerChild, task_id: str, request: TaskRequest) -> bool:
        message: dict[str, Any] = {
            "id": task_id,
            "kind": request.kind,
            "model_path": request.model_path,
            "input_path": request.input_path,
            "output_path": request.output_path,
            "settings": dict(request.settings),
            "device": request.device,
            "threads": request.threads,
            "memory_limit_bytes": request.memory_limit_bytes,
        }
        if request.checkpoint_dir:
            message["checkpoint_dir"] = request.checkpoint_dir
        assert child.proc.stdin is not None
        try:
            child.proc.stdin.write((json.dumps(message) + "\n").encode())
            await child.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    async def _parse_reply(self, child: WorkerChild, task_id: str, line: bytes, limit: int) -> TaskOutcome:
        if not line:
            return await crashed(child, "the worker died during the task")
        try:
            reply = json.loads(line)
            if not isinstance(reply, dict) or reply.get("id") != task_id:
                raise ValueError("response does not answer the request")
            if reply.get("ok") is True:
                outcome = TaskOutcome(
                    ok=True,
                    rows=int(reply["rows"]),
                    seconds=float(reply["seconds"]),
                    commitment=str(reply.get("commitment") or ""),
                    load_seconds=float(reply.get("load_seconds") or 0.0),
                    cpu_seconds=float(reply.get("cpu_seconds") or 0.0),
                )
            else:
                outcome = TaskOutcome.failed(ErrorKind(reply["error_kind"]), str(reply["message"]))
        except (ValueError, KeyError, TypeError) as exc:
            return await crashed(child, f"the worker sent a malformed response ({exc})", kill=True)
        peak = child.peak_rss()
        if limit > 0 and peak > limit:
            # A spike between two polls still counts; the child's peak stays tainted, so replace it.
            await child.kill_and_wait()
            return over_memory(peak, limit)
        return outcome

    async def _watch_memory(self, child: WorkerChild, limit: int) -> int:
        """Return the child's peak RSS once it exceeds limit; wait forever without a limit."""
        if limit <= 0:
            await asyncio.Event().wait()
        while True:
            peak = child.peak_rss()
            if peak > limit:
                return peak
            await asyncio.sleep(self._poll_interval_s)


async def crashed(child: WorkerChild, what: str, *, kill: bool = False) -> TaskOutcome:
    """The outcome of a worker that died or broke the protocol (`what`): its exit status and the
    tail of its stderr (kill: it is killed first, else given 5 s to exit)."""
    if kill:
        await child.kill_and_wait()
    else:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(child.proc.wait(), 5.0)
        child.kill()
    code = child.proc.returncode
    status = ""
    if code is not None and code < 0:
        try:
            status = f", killed by {signal.Signals(-code).name}"
        except ValueError:
            status = f", killed by signal {-code}"
    elif code is not None:
        status = f", exit code {code}"
    tail = await child.stderr_tail()
    return TaskOutcome.failed(ErrorKind.CRASHED, f"{what}{status}; stderr tail: {tail or '(empty)'}")


def reads_of(request: TaskRequest) -> list[str]:
    """Every file a task of any kind reads (node.worker's protocol): its program, its input
    and the further blobs its settings name under "paths" (a training round's weights)."""
    paths = request.settings.get("paths")
    named = [str(p) for p in paths.values()] if isinstance(paths, Mapping) else []
    return [*([request.model_path] if request.model_path is not None else []), request.input_path, *named]


def over_memory(peak: int, limit: int) -> TaskOutcome:
    """The outcome of a task whose worker held `peak` bytes, over its `limit`."""
    return TaskOutcome.failed(
        ErrorKind.OUT_OF_MEMORY,
        f"the task used {peak / 2**20:.0f} MiB, over its memory limit of {limit / 2**20:.0f} MiB",
    )
