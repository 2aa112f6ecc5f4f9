"""A started task worker (node.executor's child process): its pipes, a bounded tail of its
stderr, its peak memory, and how to kill it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import psutil

from node.lending import TaskDesk
from tensorgrid import processes
from tensorgrid.sandbox import Scratch
from tensorgrid.sandbox.forked import AsyncForkedChild

__all__ = ["ChildProcess", "WorkerChild"]

# exec'd (asyncio's), or forked by a zygote (tensorgrid.sandbox.launch): the same interface here
ChildProcess = asyncio.subprocess.Process | AsyncForkedChild


class WorkerChild:
    """One worker process: its pipes, a bounded tail of its stderr, and how to kill it."""

    def __init__(
        self,
        proc: ChildProcess,
        tail_bytes: int,
        scratch: Scratch,
        light: bool = False,
        desk: TaskDesk | None = None,
    ) -> None:
        self.proc = proc
        self.scratch = scratch  # deleted once the child is gone
        self.desk = desk  # lend=True: its tasks' files go through it (deleted with the scratch)
        self.light = light  # node.light_worker: no torch, LIGHT_KINDS only
        self._tail = bytearray()
        self._tail_bytes = tail_bytes
        # stderr must be drained continuously or a chatty child blocks on a full pipe.
        self._drain = asyncio.create_task(self._drain_stderr())

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(4096):
            self._tail += chunk
            del self._tail[: max(0, len(self._tail) - self._tail_bytes)]

    async def stderr_tail(self) -> str:
        """The last bytes the child wrote to stderr, once it has closed it (bounded wait)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drain), 1.0)
        return self._tail.decode("utf-8", "replace").strip()

    def kill(self) -> None:
        """SIGKILL the child's whole process group (it leads its own session)."""
        if isinstance(self.proc, AsyncForkedChild):
            self.proc.kill()  # through its pidfd: never a recycled pid
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    async def kill_and_wait(self) -> None:
        self.kill()
        await self.proc.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drain), 1.0)
        self.close_dirs()

    def close_dirs(self) -> None:
        """Delete the child's scratch (and desk) directories: it is gone."""
        self.scratch.close()
        if self.desk is not None:
            self.desk.close()

    def peak_rss(self) -> int:
        """Peak resident memory since the last reset (VmHWM: tensorgrid.processes.peak_rss, the
        referee's measure too), or current RSS off Linux."""
        peak = processes.peak_rss(self.pid)
        if peak is not None:
            return peak
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return 0

    def reset_peak(self) -> None:
        """Restart VmHWM from the current RSS so one task's peak is not charged to the next."""
        processes.reset_peak(self.pid)
