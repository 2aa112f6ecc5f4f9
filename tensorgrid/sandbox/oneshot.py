"""One request, one sandboxed child: how the coordinator runs a stranger's graph.

Parent: `run_once(entry, request, limits, ...)` starts the child (tensorgrid.sandbox.boot),
waits for its greeting (start-up is not charged to the time limit), sends one JSON request
line, and waits at most limits.time_s for one JSON response line; then it moves the named
output files out of the child's scratch directory and deletes the directory. A
`WarmSandbox` keeps its child for the next request (torch is imported once) and replaces
it after any limit or crash. Anything the
child does wrong becomes a SandboxFailure naming what happened (timeout, out_of_memory,
crashed, error); the parent never unpickles anything: JSON lines and files only.

Child: the entry module's main() calls `serve_once(handler)` (tensorgrid.sandbox.serve);
handler(request, scratch) returns a JSON-able dict for each request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from tensorgrid.errors import TensorGridError
from tensorgrid.processes import cpu_cores, cpu_seconds
from tensorgrid.sandbox import launch
from tensorgrid.sandbox.forked import ForkedChild, json_object
from tensorgrid.sandbox.lending import Loans, rewrite
from tensorgrid.sandbox.policy import Isolation, SandboxLimits, Scratch, child_config, report_status, scrubbed_env

log = logging.getLogger("tensorgrid.sandbox")
TIMEOUT, OUT_OF_MEMORY, CRASHED, ERROR = "timeout", "out_of_memory", "crashed", "error"
STDERR_TAIL_BYTES = 4096
MAX_LINE_BYTES = 1 << 20
Child = subprocess.Popen[bytes] | ForkedChild  # exec'd, or forked by a zygote (tensorgrid.sandbox.launch)
OOM_MARKERS = ("can't allocate memory", "out of memory", "cannot allocate memory")


class SandboxFailure(TensorGridError):
    """The sandboxed child did not answer: kind is timeout, out_of_memory, crashed or error."""

    def __init__(self, kind: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        # what the child added to its error answer (serve.Reported): the child's word, which a
        # stranger's program running in it could forge; empty when it said nothing more
        self.details: dict[str, Any] = dict(details or {})

    @property
    def over_limit(self) -> bool:
        """The child hit a limit of the sandbox (time or memory), not a fault of its input files."""
        return self.kind in (TIMEOUT, OUT_OF_MEMORY)

    @property
    def raised(self) -> bool:
        """The program ran and raised an ordinary error (not a limit, not a crash)."""
        return self.kind == ERROR


def run_once(
    entry: str,
    request: Mapping[str, Any],
    limits: SandboxLimits,
    *,
    isolation: Isolation | None = None,
    scratch_root: os.PathLike[str] | str | None = None,
    outputs: Mapping[str, os.PathLike[str] | str] | None = None,
) -> dict[str, Any]:
    """Run `entry` on one request in a fresh sandboxed child; its answer, or SandboxFailure.

    outputs maps a file name the child writes in its scratch directory (given to the
    handler) to where the parent wants it once the child answered ok."""
    child = WarmSandbox(entry, limits, isolation=isolation, scratch_root=scratch_root)
    try:
        return child.call(request, outputs)
    finally:
        child.close()


class WarmSandbox:
    """One sandboxed child kept for many requests (its interpreter and torch start once), one
    request at a time. A child that goes over a limit, dies or answers garbage is killed, and
    the next call starts a fresh one. Its isolation is fixed when it starts: give it the
    directories every request reads from, never one holding a key.

    lend: the child reads no directory of the caller's; each call names the files its request
    reads (`inputs`), which are lent to it for that call only: hard links (copies across file
    systems) in a directory it may read and not write, its request's paths rewritten to them.
    A child serving many strangers in turn (the coordinator's referee) so reads only the files
    of the request at hand, not every blob of every other submitter."""

    def __init__(
        self,
        entry: str,
        limits: SandboxLimits,
        *,
        isolation: Isolation | None = None,
        scratch_root: os.PathLike[str] | str | None = None,
        lend: bool = False,
    ) -> None:
        self.entry, self.limits = entry, limits
        self.isolation = isolation or Isolation()
        self.scratch_root = scratch_root
        self.lend = lend
        self._lock = threading.Lock()
        self._used = threading.local()  # the CPU time of the calling thread's last call (last_cpu_s)
        self._child: _Channel | None = None
        self._starting: _Channel | None = None  # a child not yet greeted: close() kills it too
        self._closed = False  # set by close(): no child starts after it

    def call(
        self,
        request: Mapping[str, Any],
        outputs: Mapping[str, os.PathLike[str] | str] | None = None,
        time_s: float | None = None,
        inputs: Iterable[os.PathLike[str] | str] = (),
    ) -> dict[str, Any]:
        """Send one request; its answer, or SandboxFailure. Output files move out of the scratch.
        time_s: this request's wall-time limit (default: the sandbox's). inputs: with `lend`,
        the files the request names, lent for this call (see the class)."""
        with self._lock:
            child = self._child if self._child is not None and self._child.alive else None
            if child is None:
                self._close_child()
                child = self._start()
            self._used.cpu_s = None
            try:
                with child.lent(inputs) as lent:
                    try:
                        reply = child.exchange(rewrite(request, lent), self.limits.time_s if time_s is None else time_s)
                    finally:
                        self._used.cpu_s = child.used_cpu_s
                for name, dest in (outputs or {}).items():
                    shutil.move(child.scratch.path / name, dest)
                return reply
            except SandboxFailure as e:
                if e.kind != ERROR:  # over a limit, crashed or garbled: this child is done
                    self._close_child()
                raise

    def last_cpu_s(self) -> float | None:
        """The CPU time (user + system, all its threads) the child spent on this thread's last
        call, answered or over its time limit; None where it cannot be read. Unlike the call's wall
        time it does not grow while the child waits for a core (the referee runs niced, behind
        everything else on a busy machine): what a run costs, not when it was let run."""
        return getattr(self._used, "cpu_s", None)

    @property
    def pid(self) -> int | None:
        """The current child's pid, once greeted and while alive (tensorgrid.sandbox.measured)."""
        child = self._child
        return child.proc.pid if child is not None and child.alive else None

    @property
    def scratch(self) -> Path | None:
        """The current child's scratch directory (its cwd), once greeted and while alive: where it
        writes what its parent may read while a request runs (tensorgrid.sandbox.measured)."""
        child = self._child
        return child.scratch.path if child is not None and child.alive else None

    def kill_child(self) -> None:
        """SIGKILL the current child's process group from any thread: a call under way fails
        (CRASHED) and the next call starts a fresh child."""
        child = self._child
        if child is not None and child.alive:
            launch.kill_group(child.proc)

    @property
    def threads(self) -> int:
        """The most threads the child's runs can use at once (its torch threads, at most the
        cores this process may run on): CPU time ÷ this is a lower bound of a run's wall time."""
        return self.limits.threads or cpu_cores()

    def warm(self) -> None:
        """Start the child now, so the first request does not pay for its start-up."""
        with self._lock:
            if self._child is None or not self._child.alive:
                self._close_child()
                self._start()

    def _start(self) -> _Channel:
        """A new child, once it greets (under the lock), kept as the current one. Until then
        close() can kill it: a coordinator stopped while its referee imports torch does not wait
        for the import. close() takes no lock, so each step here looks at `_closed` after making
        itself visible to close(): whichever of the two runs second kills the child."""
        self._refuse_if_closed()
        began = time.monotonic()
        channel = self._starting = _Channel.spawn(self.entry, self.limits, self.isolation, self.scratch_root, self.lend)
        try:
            self._refuse_if_closed()
            channel.greet(self.limits.start_timeout_s)
            self._child = channel
            # an operator reading a slow first request (a referee's ruling, a round's close) sees why
            log.info("sandboxed %s (pid %d) started in %.1f s", self.entry, channel.proc.pid, time.monotonic() - began)
        except BaseException:
            channel.close()
            raise
        finally:
            self._starting = None
        self._refuse_if_closed()
        return channel

    def _refuse_if_closed(self) -> None:
        if self._closed:
            self._close_child()
            raise SandboxFailure(CRASHED, "the sandbox is closed: it starts no child")

    def _close_child(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.close()

    def close(self) -> None:
        """Kill the child (if any, even one still starting) and delete its scratch directory.
        Calls after it fail (SandboxFailure) and start nothing."""
        self._closed = True
        starting = self._starting
        if starting is not None:
            _kill(starting.proc)  # its start then fails (SandboxFailure) and cleans up after itself
        self._close_child()


class _Channel:
    """A started child: its pipes, its greeting, a bounded tail of its stderr."""

    def __init__(self, proc: Child, scratch: Scratch, loans: Loans | None = None) -> None:
        self.proc, self.scratch, self.loans = proc, scratch, loans
        self.used_cpu_s: float | None = None  # the CPU time of the last exchange
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.tail = bytearray()
        assert proc.stdout is not None and proc.stderr is not None
        threading.Thread(target=_read_lines, args=(proc.stdout, self.lines), daemon=True).start()
        self.drain = threading.Thread(target=_drain, args=(proc.stderr, self.tail), daemon=True)
        self.drain.start()

    @classmethod
    def spawn(
        cls, entry: str, limits: SandboxLimits, iso: Isolation, root: os.PathLike[str] | str | None, lend: bool = False
    ) -> _Channel:
        """The child started, not yet greeted (greet() waits for that)."""
        scratch = Scratch(root)
        loans = Loans(root) if lend else None
        if loans is not None:
            iso = iso.with_paths(readable=[loans.path])
        try:
            proc = launch.popen(child_config(entry, limits, iso, scratch.path), scrubbed_env(scratch.path))
        except OSError:
            scratch.close()
            if loans is not None:
                loans.close()
            raise
        return cls(proc, scratch, loans)

    def lent(self, inputs: Iterable[os.PathLike[str] | str]) -> contextlib.AbstractContextManager[dict[str, str]]:
        """Lend `inputs` to the child for one request: {caller's path: the child's}; taken back after."""
        return self.loans.lent(inputs) if self.loans is not None else contextlib.nullcontext({})

    def greet(self, timeout_s: float) -> None:
        """Wait for the child's greeting; SandboxFailure (and the child killed) without one."""
        hello = _next_line(self.lines, timeout_s)
        if hello is None or json_object(hello).get("ready") is not True:
            failure = self.died("the sandboxed child failed to start" + (" in time" if hello is None else ""))
            self.close()
            raise failure
        report_status(self.scratch.path)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def exchange(self, request: Mapping[str, Any], time_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(dict(request)).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ConnectionResetError):
            raise self.died("the sandboxed child was gone before the request was sent") from None
        started, cpu_before = time.monotonic(), cpu_seconds(self.proc.pid)
        line = _next_line(self.lines, time_s if time_s > 0 else None)
        cpu_after = cpu_seconds(self.proc.pid)  # before any kill: a reaped child has no /proc entry
        self.used_cpu_s = None if cpu_before is None or cpu_after is None else max(0.0, cpu_after - cpu_before)
        if line is None and self.proc.poll() is None:
            _kill(self.proc)
            raise SandboxFailure(TIMEOUT, f"the sandboxed run exceeded its time limit of {time_s:g}s and was killed")
        if not line:
            raise self.died(f"the sandboxed child died after {time.monotonic() - started:.1f}s")
        reply = json_object(line)
        if reply.get("ok") is True and isinstance(reply.get("result"), dict):
            return dict(reply["result"])
        if reply.get("kind") not in (OUT_OF_MEMORY, ERROR):
            raise self.died("the sandboxed child sent a malformed answer")
        details = reply.get("details")
        said = details if isinstance(details, dict) else None
        raise SandboxFailure(str(reply["kind"]), str(reply.get("message"))[:2000], said)

    def died(self, what: str) -> SandboxFailure:
        return _died(self.proc, self.drain, self.tail, what)

    def close(self) -> None:
        _kill(self.proc)
        self.scratch.close()
        if self.loans is not None:
            self.loans.close()


def _read_lines(stream: IO[bytes], out: queue.Queue[bytes]) -> None:
    while True:
        line = stream.readline(MAX_LINE_BYTES)
        out.put(line)
        if not line:
            return


def _drain(stream: IO[bytes], tail: bytearray) -> None:
    while chunk := stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096):
        tail += chunk
        del tail[: max(0, len(tail) - STDERR_TAIL_BYTES)]


def _next_line(lines: queue.Queue[bytes], timeout: float | None) -> bytes | None:
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return None


def _died(proc: Child, drain: threading.Thread, tail: bytearray, what: str) -> SandboxFailure:
    _kill(proc)
    drain.join(1.0)
    code = proc.returncode
    text = tail.decode("utf-8", "replace").strip()
    kind = OUT_OF_MEMORY if any(m in text.lower() for m in OOM_MARKERS) else CRASHED
    status = ""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            status = f", killed by {signal.Signals(-code).name}"
    elif code is not None:
        status = f", exit code {code}"
    return SandboxFailure(kind, f"{what}{status}; stderr tail: {text[-1000:] or '(empty)'}")


def _kill(proc: Child) -> None:
    """SIGKILL the child's process group (it leads its own session), then reap it."""
    if proc.poll() is None:
        launch.kill_group(proc)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5.0)
