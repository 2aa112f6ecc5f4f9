"""The agent's handle on one replica's warm serving child (node.serving.worker).

It reuses the executor's spawn machinery (tensorgrid.sandbox: scrubbed environment, scratch
directory, no network, its own session, prepare() before "ready") with another entry point,
then speaks binary frames. Each micro-batch runs under the replica's limits, as a task does:
its time limit, and its memory limit watched through the child's peak RSS. A child over a
limit, dead, or speaking garbage is killed, the batch's requests fail (TIMEOUT,
OUT_OF_MEMORY, CRASHED), and the next batch starts a fresh child and loads the program again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from node.child import WorkerChild
from node.executor import Executor
from node.serving.frames import Frame, FrameError, encode, read_frame_async
from node.spawn import WorkerStartError
from node.supervision import crashed
from tensorgrid.serving import trace
from tensorgrid.types import ErrorKind, TaskError

__all__ = ["ReplicaLoad", "ServingProcess", "SERVING_ENTRY"]

log = logging.getLogger("tensorgrid.node.serving")
SERVING_ENTRY = "node.serving.worker"
DATA_SOCKET = "data-link.sock"  # in the child's scratch directory, for the hand-over alone
DATA_HANDOVER_S = 5.0
T = TypeVar("T")
Answer = bytes | TaskError


@dataclass(frozen=True)
class ReplicaLoad:
    """What the child loads: one replica's program and settings, and the limits of its batches."""

    model_path: str
    serves: str
    settings: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    threads: int = 0
    memory_limit_bytes: int = 0
    time_limit_s: float = 0.0  # per micro-batch; 0: none


class _LimitHit(Exception):
    def __init__(self, error: TaskError) -> None:
        super().__init__(error.message)
        self.error = error


class ServingProcess(Executor):
    """One warm serving child: load once, then run micro-batches one at a time."""

    def __init__(self, load: ReplicaLoad, **executor: Any) -> None:
        """executor: node.executor.Executor's keywords (isolation, scratch_root, memory_cap_bytes …)."""
        super().__init__(entry=SERVING_ENTRY, device=load.device, **executor)
        self.load = load
        self._loaded: WorkerChild | None = None  # the child that holds the program
        self._watcher: asyncio.Future[None] | None = None
        self._over = 0  # the peak RSS for which the watcher killed the running batch's child
        self._peak_from: WorkerChild | None = None  # the child whose VmHWM was reset after its load
        self._control: socket.socket | None = None  # a data link's control socket, being handed over
        self._links: set[asyncio.Future[None]] = set()  # readers of the children's data link controls

    async def ready(self) -> TaskError | None:
        """Start the child and load the program now: None when it is ready, else why not."""
        try:
            async with self._lock:
                await self._ready_child()
        except _LimitHit as hit:
            return hit.error
        return None

    async def run_batch(self, payloads: list[bytes]) -> list[Answer]:
        """One output (safetensors bytes) or TaskError per request, in order; never raises for
        what the child does."""
        try:
            header, outputs = await self._exchange({"op": "run_batch"}, payloads, self._reply)
        except _LimitHit as hit:
            return [hit.error] * len(payloads)
        if header.get("ok") is not True:
            return [_task_error(header)] * len(payloads)
        results = header.get("results")
        if not isinstance(results, list) or len(results) != len(payloads) or len(outputs) != len(payloads):
            await self._drop("the serving worker answered a batch with the wrong number of results")
            return [TaskError(ErrorKind.CRASHED, "the serving worker sent a malformed answer")] * len(payloads)
        return [out if r is None else _task_error(r) for r, out in zip(results, outputs, strict=True)]

    async def generate(self, prompt: bytes, seed: int, on_tokens: Callable[[list[int]], Awaitable[None]]) -> Answer:
        """Decode one prompt; on_tokens is awaited with each step's new tokens; the output or why not."""

        async def frames(child: WorkerChild) -> Frame:
            while True:
                header, payloads = await self._reply(child)
                if header.get("op") != "tokens":
                    return header, payloads
                tokens = header.get("tokens")
                if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
                    raise FrameError("a tokens frame without token ids")
                await on_tokens(tokens)

        try:
            header, outputs = await self._exchange({"op": "generate", "seed": seed}, [prompt], frames)
        except _LimitHit as hit:
            return hit.error
        if header.get("ok") is not True:
            return _task_error(header)
        if len(outputs) != 1:
            await self._drop("the serving worker answered a prompt without its output")
            return TaskError(ErrorKind.CRASHED, "the serving worker sent a malformed answer")
        return outputs[0]

    async def attach_data(
        self, sock: socket.socket, on_batch: Callable[[dict[str, Any]], None], max_batch: int
    ) -> bool:
        """Hand the loaded child a data link (tensorgrid.serving.datalink), connected and
        authenticated by the agent: the child reaches no network of its own, so the socket
        goes in through a Unix socket in its scratch directory (SCM_RIGHTS). on_batch gets each
        micro-batch the child answers on it ({"batch", "ids", "in", "out"}: its digests) for
        the agent to sign. False if the child would not take it (the Serve stream serves on)."""
        async with self._lock:
            child = self._child
            if self._closed or child is None or not child.alive or child is not self._loaded:
                return False
            path = child.scratch.path / DATA_SOCKET
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            scratch = os.open(child.scratch.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                # a scratch path may pass AF_UNIX's 108 bytes: bound through the directory's fd
                listener.bind(f"/proc/self/fd/{scratch}/{DATA_SOCKET}")
                listener.listen(1)
                listener.setblocking(False)

                async def hand_over(child: WorkerChild) -> Frame:
                    loop = asyncio.get_running_loop()
                    conn, _ = await loop.sock_accept(listener)
                    socket.send_fds(conn, [b"L"], [sock.fileno()])
                    self._control = conn
                    return await self._reply(child)

                header, _ = await self._send_and_wait(
                    child,
                    {"op": "data_link", "path": DATA_SOCKET, "max_batch": max_batch, "trace": trace.enabled()},
                    [],
                    hand_over,
                    DATA_HANDOVER_S,
                )
            except (_LimitHit, OSError) as e:
                log.warning("the serving worker did not take its data link: %s", e)
                return False
            finally:
                listener.close()
                os.close(scratch)
                with contextlib.suppress(OSError):
                    path.unlink()
            control, self._control = self._control, None
            if header.get("ok") is not True or control is None:
                log.warning("the serving worker refused its data link: %s", header.get("message", header))
                if control is not None:
                    control.close()
                return False
            self._links.add(asyncio.ensure_future(self._read_control(control, on_batch)))
            limit = self.load.memory_limit_bytes
            if limit > 0 and self._watcher is None:
                self._watcher = asyncio.ensure_future(self._watch(limit))
            return True

    async def _read_control(self, conn: socket.socket, on_batch: Callable[[dict[str, Any]], None]) -> None:
        """What the child tells the agent of the batches it answered on its data link."""
        reader, writer = await asyncio.open_unix_connection(sock=conn)
        try:
            while (frame := await read_frame_async(reader)) is not None:
                on_batch(frame[0])
        except (FrameError, ConnectionError) as e:
            log.info("a serving worker's data link control ended: %s", e)
        finally:
            writer.close()

    # ---- the child ------------------------------------------------------------------------------
    async def _ready_child(self) -> WorkerChild:
        """The child holding the program, started and loaded if need be (outside any time limit)."""
        child = self._child
        if child is not None and child.alive and child is self._loaded:
            return child
        try:
            child = await self._ensure_child(0)
        except WorkerStartError as exc:
            raise _LimitHit(TaskError(ErrorKind.CRASHED, str(exc))) from None
        header = await self._load(child, self.load)
        if header.get("ok") is not True:
            error = _task_error(header)
            await self._drop(f"the program did not load: {error.message}")
            raise _LimitHit(error)
        self._loaded = child
        return child

    async def _load(self, child: WorkerChild, load: ReplicaLoad) -> dict[str, Any]:
        """Have the child load the program: with lend (the daemon's replicas), its file is lent
        for the load alone, so a serving child reads nothing of the node's once it serves."""
        desk = child.desk
        try:
            lent = await asyncio.to_thread(desk.lend, [load.model_path], []) if desk is not None else ({}, {})
        except OSError as e:
            raise _LimitHit(TaskError(ErrorKind.BLOB_UNAVAILABLE, f"the program could not be lent: {e}")) from None
        request = {
            "op": "load",
            "model_path": lent[0].get(load.model_path, load.model_path),
            "serves": load.serves,
            "settings": load.settings,
            "device": load.device,
            "threads": load.threads,
            "memory_limit_bytes": load.memory_limit_bytes,
        }
        try:
            header, _ = await self._send_and_wait(child, request, [], self._reply, self._start_timeout_s)
        finally:
            if desk is not None:
                await asyncio.to_thread(desk.take_back, *lent, False)
        return header

    async def _exchange(
        self, request: dict[str, Any], payloads: list[bytes], answer: Callable[[WorkerChild], Coroutine[Any, Any, T]]
    ) -> T:
        async with self._lock:
            if self._closed:
                raise _LimitHit(TaskError(ErrorKind.RELEASED, "the replica is closed"))
            child = await self._ready_child()
            if self.load.memory_limit_bytes > 0 and self._peak_from is not child:
                # Once per child, after its load (clear_refs walks the page tables: ~20-45 µs
                # a batch). Enough: a batch over the limit kills the child, so every earlier
                # batch of a live child stayed under it and VmHWM passes the limit exactly
                # when the running batch does.
                child.reset_peak()
                self._peak_from = child
            self._running = True  # close() kills the child now rather than after the batch
            try:
                return await self._send_and_wait(child, request, payloads, answer, self.load.time_limit_s)
            finally:
                self._running = False

    async def _send_and_wait(
        self,
        child: WorkerChild,
        request: dict[str, Any],
        payloads: list[bytes],
        answer: Callable[[WorkerChild], Coroutine[Any, Any, T]],
        time_limit_s: float,
    ) -> T:
        """Send one frame and await its answer under the time and memory limits.

        No task is made per batch (this is the latency path): the time limit is a timeout
        scope, the memory limit a watcher that lives as long as the process (_watch)."""
        assert child.proc.stdin is not None
        limit = self.load.memory_limit_bytes
        if limit > 0 and self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch(limit))
        self._over = 0
        try:
            child.proc.stdin.write(encode(request, payloads))
            await child.proc.stdin.drain()
            async with asyncio.timeout(time_limit_s or None):
                result = await answer(child)
        except TimeoutError:
            await self._drop("over its time limit")
            raise _LimitHit(
                TaskError(ErrorKind.TIMEOUT, f"the batch exceeded its time limit of {time_limit_s:g}s")
            ) from None
        except (FrameError, ConnectionError) as exc:
            if self._over:  # the watcher killed it
                await self._drop("over its memory limit")
                raise _LimitHit(_over_memory(self._over, limit)) from None
            raise _LimitHit(await self._crash(child, f"the serving worker broke off ({exc})")) from None
        peak = max(self._over, child.peak_rss() if limit > 0 else 0)
        if peak > limit > 0:  # a spike between two polls still counts; the child's peak stays tainted
            await self._drop("over its memory limit")
            raise _LimitHit(_over_memory(peak, limit))
        return result

    async def _watch(self, limit: int) -> None:
        """Kill the child once its peak RSS passes the limit during a batch (the batch then
        fails as OUT_OF_MEMORY)."""
        while not self._closed:
            await asyncio.sleep(self._poll_interval_s)
            child = self._child
            busy = self._running or self._links  # a data link's batches run without the agent
            if busy and child is not None and child.alive and (peak := child.peak_rss()) > limit:
                self._over = peak
                child.kill()

    async def close(self, timeout_s: float = 1.0) -> None:
        """Stop the child now (a running batch fails), and the memory watcher."""
        if self._watcher is not None:
            self._watcher.cancel()
        for reader in self._links:
            reader.cancel()
        await super().close(timeout_s)

    async def _reply(self, child: WorkerChild) -> Frame:
        assert child.proc.stdout is not None
        frame = await read_frame_async(child.proc.stdout)
        if frame is None:
            raise FrameError("the serving worker closed its pipe")
        return frame

    async def _crash(self, child: WorkerChild, what: str) -> TaskError:
        outcome = await crashed(child, what, kill=True)
        self._loaded = None
        assert outcome.error is not None
        log.warning("serving worker: %s", outcome.error.message[:500])
        return outcome.error

    async def _drop(self, why: str) -> None:
        """Kill the child (the next batch starts a fresh one and loads the program again)."""
        child, self._loaded = self._child, None
        if child is not None and child.alive:
            log.info("serving worker %d %s; replacing it", child.pid, why)
            await child.kill_and_wait()


def _task_error(header: Any) -> TaskError:
    try:
        return TaskError(ErrorKind(header["error_kind"]), str(header.get("message", ""))[:2000])
    except (KeyError, TypeError, ValueError):
        return TaskError(ErrorKind.CRASHED, "the serving worker sent a malformed error")


def _over_memory(peak: int, limit: int) -> TaskError:
    return TaskError(
        ErrorKind.OUT_OF_MEMORY,
        f"the batch used {peak / 2**20:.0f} MiB, over the replica's memory limit of {limit / 2**20:.0f} MiB",
    )
