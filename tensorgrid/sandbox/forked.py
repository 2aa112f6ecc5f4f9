"""The requester's half of a zygote's child (tensorgrid.sandbox.zygote): ask for one, and a
process-like object for it, blocking (ForkedChild: what oneshot's subprocess.Popen use needs)
or for asyncio (AsyncForkedChild: what node.child.WorkerChild needs).

The child is not our child: its exit status comes from the zygote on the request's connection.
Signals go through a pidfd opened right after its pid arrived (a recycled pid is never
signalled); its process group is signalled only while the pidfd says it is alive. Should the
zygote die first, the child lives on (its pipes are ours) and its end is seen on the pidfd; its
exit code is then unknown: -SIGKILL when we killed it, else UNKNOWN_EXIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
from typing import IO, Any

UNKNOWN_EXIT = 255
CONNECT_TIMEOUT_S = 10.0
_live: set[int] = set()  # pids of this process's zygote children not yet ended


def live_children() -> list[int]:
    """This process's children forked by a zygote and not yet ended (they are the zygote's
    children, not ours: psutil's children() misses them; node.metrics counts them)."""
    return sorted(_live)


class ZygoteUnavailable(OSError):
    """No zygote answers at that socket (or it died before answering): start the child by exec."""


class ZygoteRefused(Exception):
    """The zygote answered with a refusal (an entry it does not run, a malformed request)."""


def request_child(path: str, config: dict[str, Any], env: dict[str, str]) -> tuple[socket.socket, int, list[int]]:
    """Ask the zygote at `path` for a child: (connection, pid, [our stdin write end, stdout
    read end, stderr read end]); the child's ends are sent and closed here."""
    ours: list[int] = []
    theirs: list[int] = []
    for child_reads in (True, False, False):
        r, w = os.pipe2(os.O_CLOEXEC)
        theirs.append(r if child_reads else w)
        ours.append(w if child_reads else r)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        conn.settimeout(CONNECT_TIMEOUT_S)
        try:
            conn.connect(path)
        except OSError as e:
            raise ZygoteUnavailable(e.errno or 0, f"zygote at {path}: {e}") from None
        try:
            socket.send_fds(conn, [json.dumps({"config": config, "env": env}).encode()], theirs)
        except OSError as e:  # it hung up: a refusal of who we are may be waiting to be read
            early = json_object(_recv_quietly(conn))
            if "error" in early:
                raise ZygoteRefused(str(early["error"])[:500]) from None
            raise ZygoteUnavailable(e.errno or 0, f"zygote at {path}: {e}") from None
        reply = _recv_quietly(conn)
        answer = json_object(reply)
        if "pid" not in answer:
            if reply:
                raise ZygoteRefused(str(answer.get("error", answer))[:500])
            raise ZygoteUnavailable(0, f"zygote at {path} hung up")
    except BaseException:
        conn.close()
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    return conn, int(answer["pid"]), ours


class _Forked:
    """What both flavours share: the pid, its pidfd, the exit report, kills. Threads may share
    one (a warm sandbox closed while another thread starts it): the lock keeps one from using the
    pidfd or the connection while another closes them."""

    def __init__(self, conn: socket.socket, pid: int) -> None:
        self._lock = threading.RLock()
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)  # before the zygote may reap it: it waits for "opened"
        _live.add(pid)
        self.conn = conn
        self.returncode: int | None = None
        self.usage: dict[str, float] = {}
        self._killed = False
        self.orphaned = False  # the zygote hung up before reporting the child's end
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.send(b'{"opened": true}')

    def _collect(self) -> bool:
        """Read the zygote's report if it came; once the zygote is gone (it hung up without
        one), the child's end as its pidfd shows it. True once the child has ended."""
        with self._lock:
            return self._collect_locked()

    def _collect_locked(self) -> bool:
        if self.returncode is not None:
            return True
        if not self.orphaned:
            try:
                data = self.conn.recv(65536)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                data = b""
            report = json_object(data) if data else {}
            if "exit" in report:
                code = report.pop("exit")
                self.usage = report
                self._finish(int(code) if code is not None else self._unknown())
                return True
            self.orphaned = not data
        if self.orphaned and select.select([self.pidfd], [], [], 0)[0]:
            self._finish(self._unknown())
            return True
        return False

    def _unknown(self) -> int:
        return -signal.SIGKILL if self._killed else UNKNOWN_EXIT

    def _finish(self, code: int) -> None:
        self.returncode = code
        _live.discard(self.pid)
        with contextlib.suppress(OSError):
            os.close(self.pidfd)
        self.pidfd = -1
        self.conn.close()

    def _alive(self) -> bool:
        with self._lock:
            return self.pidfd >= 0 and not select.select([self.pidfd], [], [], 0)[0]

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self._alive():
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pidfd_send_signal(self.pidfd, sig)

    def kill(self) -> None:
        """SIGKILL the child's process group (it leads its own session) and the child itself."""
        with self._lock:
            if self._alive():
                self._killed = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ForkedChild(_Forked):
    """A zygote's child behind subprocess.Popen's interface (what oneshot uses of it)."""

    def __init__(self, conn: socket.socket, pid: int, fds: list[int]) -> None:
        super().__init__(conn, pid)
        self.stdin: IO[bytes] | None = os.fdopen(fds[0], "wb")
        self.stdout: IO[bytes] | None = os.fdopen(fds[1], "rb")
        self.stderr: IO[bytes] | None = os.fdopen(fds[2], "rb")

    def poll(self) -> int | None:
        self._collect()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._collect():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("(zygote child)", timeout or 0.0)
            with self._lock:
                watched = self.pidfd if self.orphaned else self.conn.fileno()
            # another thread may end the child (and close what is watched) meanwhile: look again
            with contextlib.suppress(ValueError, OSError):
                select.select([watched], [], [], left)
        assert self.returncode is not None
        return self.returncode


class AsyncForkedChild(_Forked):
    """A zygote's child behind asyncio.subprocess.Process's interface (what WorkerChild uses):
    stream pipes, returncode kept current by the loop, `await wait()`."""

    def __init__(self, conn: socket.socket, pid: int) -> None:
        super().__init__(conn, pid)
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        self._watched = conn.fileno()
        self._loop.add_reader(self._watched, self._check)
        self._check()

    @classmethod
    async def start(cls, conn: socket.socket, pid: int, fds: list[int]) -> AsyncForkedChild:
        child = cls(conn, pid)
        loop = child._loop
        try:
            child.stdout = await _reader(loop, fds[1])
            child.stderr = await _reader(loop, fds[2])
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.streams.FlowControlMixin(loop=loop), os.fdopen(fds[0], "wb", buffering=0)
            )
            child.stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        except BaseException:
            child.kill()
            raise
        return child

    def _check(self) -> None:
        ended = self._collect()
        if ended or (self.orphaned and self._watched != self.pidfd):
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._watched)
            self._watched = -1
        if not ended:
            if self.orphaned and self._watched == -1:  # from now on the pidfd says when it ends
                self._watched = self.pidfd
                self._loop.add_reader(self.pidfd, self._check)
            return
        if not self._done.done():
            self._done.set_result(self.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._done)


def _recv_quietly(conn: socket.socket) -> bytes:
    try:
        return conn.recv(65536)
    except OSError:
        return b""


def json_object(data: bytes) -> dict[str, Any]:
    """A JSON object sent by a child or the zygote; {} for anything else (never raises)."""
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _reader(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=2**16, loop=loop)  # asyncio.subprocess's default limit
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", buffering=0)
    )
    return reader
