"""One request in a fresh sandboxed child whose peak resident memory is measured, as a node
measures its worker's: how the referee reviews a claim that a task's program needs more memory
than the task's limit (coordinator.services.verification.memory).

A node compares the peak RSS (VmHWM) of its whole worker process, torch loaded, with the task's
limit (node.executor), polled while the task runs and read once more after it answered. The
referee's warm child is no measure of that: it holds other jobs' programs and has a cap of its
own. So each measurement starts a child of its own (the entry imported, nothing else loaded),
restarts its VmHWM once it has greeted (the node's worker is reset the same way before a task),
polls it while the request runs, and kills the child as soon as it passes `stop_at_bytes`: what
the run holds past that is not the caller's to pay for, and that much already decides.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorgrid.processes import peak_rss, reset_peak
from tensorgrid.sandbox.oneshot import CRASHED, SandboxFailure, WarmSandbox
from tensorgrid.sandbox.policy import PROGRESS_FILE

POLL_S = 0.02  # a node's executor polls every 0.1 s; the referee is stricter with its own memory


@dataclass(frozen=True)
class Measured:
    """What one measured request did."""

    peak_bytes: int  # VmHWM since the reset after the greeting, at its highest seen (0: unreadable)
    stopped: bool  # the child was killed for passing stop_at_bytes
    wall_s: float
    cpu_s: float | None  # the child's CPU time over the request (None: unreadable)
    answer: dict[str, Any] | None = None  # the child's answer, when it gave one
    failure: SandboxFailure | None = None  # why it gave none (a kill for stop_at_bytes: CRASHED)
    crossed_s: float | None = None  # when (since the request) the peak first passed mark_at_bytes
    # the count the child last wrote to PROGRESS_FILE (its scratch) while its peak was still within
    # mark_at_bytes (stop_at_bytes without a mark), the highest read (None: none read): what a
    # request killed for its memory did before it passed the mark. The child's word: a program
    # running in it may write any count there, so the caller bounds it
    progress: int | None = None

    @property
    def readable(self) -> bool:
        """Whether the peak could be read at all (Linux /proc)."""
        return self.peak_bytes > 0


def run_measured(
    box: WarmSandbox,
    request: Mapping[str, Any],
    *,
    stop_at_bytes: int,
    mark_at_bytes: int = 0,
    inputs: Iterable[os.PathLike[str] | str] = (),
    poll_s: float = POLL_S,
    time_s: float | None = None,
    outputs: Mapping[str, os.PathLike[str] | str] | None = None,
) -> Measured:
    """`request` to `box`'s child, started for it (a box made for this one request, `lend` set,
    closed by the caller), lending it `inputs`: its peak resident memory measured from its
    greeting on; the child is killed once that passes stop_at_bytes (0: never); crossed_s says
    when it first passed mark_at_bytes (0: not asked); time_s: the request's wall-time limit
    (default: the box's); outputs: the files its answer writes, as WarmSandbox.call's. Never
    raises a SandboxFailure: it is in the result."""
    try:
        box.warm()
    except SandboxFailure as e:
        return Measured(0, False, 0.0, None, failure=e)
    pid = box.pid
    if pid is None:
        return Measured(0, False, 0.0, None, failure=SandboxFailure(CRASHED, "the child was gone after greeting"))
    reset_peak(pid)  # a node's worker is reset before each task: start-up does not count
    watch = _Watch(box, pid, stop_at_bytes, mark_at_bytes, poll_s)
    started = watch.started = time.monotonic()
    answer, failure = None, None
    watch.start()
    try:
        answer = box.call(request, outputs=outputs, time_s=time_s, inputs=inputs)
    except SandboxFailure as e:
        failure = e
    finally:
        watch.stop()
    wall = time.monotonic() - started
    cpu = box.last_cpu_s()
    return Measured(watch.peak, watch.stopped, wall, cpu, answer, failure, watch.crossed_s, watch.progress)


class _Watch:
    """A thread polling a child's VmHWM: the highest seen, and a kill once it passes stop_at."""

    def __init__(self, box: WarmSandbox, pid: int, stop_at: int, mark_at: int, poll_s: float) -> None:
        self.box, self.pid, self.stop_at, self.mark_at, self.poll_s = box, pid, stop_at, mark_at, poll_s
        self.started = time.monotonic()
        self.crossed_s: float | None = None
        self.peak = 0
        self.progress: int | None = None  # Measured.progress
        self._scratch = box.scratch  # the child's: where it writes PROGRESS_FILE
        self.stopped = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        if self.box.pid == self.pid:  # it answered and lives: a spike between two polls still counts
            self._read()

    def _read(self) -> None:
        done = _progress(self._scratch)  # before the peak: a count read while the peak was within
        peak = peak_rss(self.pid)
        if peak is not None and not self.stopped:
            self.peak = max(self.peak, peak)
            if self.mark_at > 0 and self.crossed_s is None and peak > self.mark_at:
                self.crossed_s = time.monotonic() - self.started
            within = self.mark_at if self.mark_at > 0 else self.stop_at
            if done is not None and (within <= 0 or peak <= within):
                self.progress = done if self.progress is None else max(self.progress, done)  # never back

    def _run(self) -> None:
        while not self._done.is_set():
            self._read()
            if self.stop_at > 0 and self.peak > self.stop_at and not self.stopped:
                self.stopped = True
                self.box.kill_child()
                return
            self._done.wait(self.poll_s)


def _progress(scratch: Path | None) -> int | None:
    """The count in the child's PROGRESS_FILE (a few ASCII digits), None when there is none. The
    child owns its scratch: the file may be anything a program made it (a FIFO, which a plain open
    would wait on forever, holding this poller and its kill; a symlink), so only a regular file is
    read, never followed, never waited on."""
    if scratch is None:
        return None
    try:
        fd = os.open(scratch / PROGRESS_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 32)
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(text) if text.isdigit() else None
