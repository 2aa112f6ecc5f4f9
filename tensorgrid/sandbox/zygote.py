"""`python -m tensorgrid.sandbox.zygote --socket PATH`: sandboxed children by fork, not exec.

A fresh sandboxed child (tensorgrid.sandbox.boot) spends 2.5-4.6 CPU-seconds importing torch and
torch.export's serializer before it runs anything. The zygote makes those imports once, then
forks one child per request on a unix socket: each child is a copy of a process that never ran
anybody's program, confined exactly as an exec'd child is (boot.run), and it starts in
milliseconds.

The zygote is started by exec with a scrubbed environment (never forked from a daemon: it holds
no key, no password, no daemon setting) and serves its own user only: its directory is 0700,
its socket 0600, each peer's uid is checked, and a peer that descends from the zygote (one of
its sandboxed children, or theirs: it is their subreaper, so an orphan cannot leave its tree) is
refused: a confined child cannot ask for an unconfined sibling. One request is one
SOCK_SEQPACKET message: JSON {"config": boot's config, "env": the child's whole environment}
and three descriptors (the child's stdin, stdout, stderr). The answer is {"pid": N} or
{"error": why}; when the requester has opened its pidfd ({"opened": true}), the zygote reaps
the child once it exits and sends {"exit": code, "utime": s, "stime": s, "maxrss_kb": n}.
Only entries on ENTRIES (or given with --allow when it starts) are run. See THREAT_MODEL.md.

Threads: `import torch` leaves one native thread, OpenBLAS's blas_thread_server (numpy's bundled
libscipy_openblas, loaded by torch's import), idle on a condition variable. OpenBLAS registers a
pthread_atfork handler that stops its threads before a fork, so the zygote is single-threaded
from its first fork on and every child starts with one thread (as leave_network's
unshare(CLONE_NEWUSER) needs). No torch operator runs here, so torch's OpenMP and intra-op pools
never start; the zygote holds no lock when it forks (one thread, between requests).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorgrid.sandbox import confine
from tensorgrid.sandbox.zygote_child import become_child

# node.light_worker is not here: it exists not to load torch, and its exec costs no torch import.
ENTRIES = frozenset({"node.worker", "node.serving.worker", "coordinator.services.sandbox_child"})
MAX_REQUEST_BYTES = 64 * 1024  # a request is a few KiB; the kernel sends at most ~200 KiB at once
MAX_ENV_VARS = 256
PR_SET_CHILD_SUBREAPER = 36
SO_PEERPIDFD = 77  # Linux 6.5+: a pidfd of the peer as it connected


@dataclass
class _Child:
    pid: int
    conn: socket.socket
    pidfd: int
    opened: bool = False  # the requester has its pidfd: the pid may be reaped
    exited: bool = False


@dataclass
class _Refused:
    why: str


@dataclass
class _State:
    sel: selectors.BaseSelector
    listener: socket.socket
    allowed: frozenset[str]
    children: dict[int, _Child] = field(default_factory=dict)  # by pid
    wakeup: int = -1


def warm(allowed: frozenset[str]) -> None:
    """What every child would import: torch, what loading a program pulls in, the entries."""
    import torch  # noqa: F401

    from tensorgrid.workloads.programs import warm_imports

    warm_imports()
    for entry in sorted(allowed):
        importlib.import_module(entry)
    gc.collect()
    gc.freeze()  # a child's collections then leave the zygote's objects (and their pages) alone


def listen(path: Path) -> socket.socket:
    """The socket, in a directory only this user can enter; created only once warm (a requester
    that finds no socket, or cannot connect yet, starts its child by exec)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def serve(listener: socket.socket, allowed: frozenset[str], owner: int = 0) -> None:
    """Accept requests and reap children until SIGTERM/SIGINT, or until `owner` (a pid) exits."""
    state = _State(selectors.DefaultSelector(), listener, allowed)
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    state.wakeup = rfd
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so set_wakeup_fd sees SIGCHLD
    signal.set_wakeup_fd(wfd)
    state.sel.register(listener, selectors.EVENT_READ, "accept")
    state.sel.register(rfd, selectors.EVENT_READ, "sigchld")
    if owner:
        state.sel.register(os.pidfd_open(owner), selectors.EVENT_READ, "owner")
    while True:
        for key, _ in state.sel.select():
            what = key.data
            if what == "accept":
                _accept(state)
            elif what == "sigchld":
                with contextlib.suppress(BlockingIOError):
                    os.read(rfd, 4096)
                _reap_orphans(state)
            elif what == "owner":
                return  # the process that started it is gone: so is the zygote
            elif isinstance(what, _Refused):
                _refuse(state, key.fileobj, what.why)  # type: ignore[arg-type]
            elif isinstance(what, _Child):
                _child_exited(state, what)
            else:
                _request(state, key.fileobj)  # type: ignore[arg-type]


def _accept(state: _State) -> None:
    try:
        conn, _ = state.listener.accept()
    except (BlockingIOError, InterruptedError):
        return
    conn.setblocking(False)
    refusal = peer_refusal(conn)
    # a refused peer's request is read first, then refused: closing on an unread request would
    # reset the connection and lose the answer
    state.sel.register(conn, selectors.EVENT_READ, _Refused(refusal) if refusal else None)


def _refuse(state: _State, conn: socket.socket, why: str) -> None:
    with contextlib.suppress(OSError):
        _, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST_BYTES, 3, socket.MSG_CMSG_CLOEXEC)
        for fd in fds:
            os.close(fd)
    _send(conn, {"error": why})
    state.sel.unregister(conn)
    conn.close()


def peer_refusal(conn: socket.socket) -> str:
    """Why this peer may not use the zygote ("" if it may): another user, or a process that
    descends from the zygote (a sandboxed child). With SO_PEERPIDFD the peer is checked still
    alive after the walk up its ancestry, so a recycled pid cannot pass for it."""
    pid, uid, _ = peer_credentials(conn)
    if uid != os.getuid():
        return "this zygote serves its own user only"
    pidfd = -1
    with contextlib.suppress(OSError):
        pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    try:
        if descends_from(pid, os.getpid()):
            return "a sandboxed child may not start children"
        if pidfd >= 0 and _pidfd_pid(pidfd) != pid:
            return "the peer is gone"
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    return ""


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    import struct

    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))


def _pidfd_pid(pidfd: int) -> int:
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    return -1


def descends_from(pid: int, ancestor: int) -> bool:
    """True when `ancestor` is on pid's chain of parents; also when that chain cannot be read
    (fail closed). The chain is read again until two walks agree."""
    previous: list[int] | None = None
    for _ in range(5):
        chain = _parents(pid)
        if chain is None:
            return True
        if ancestor in chain:
            return True
        if chain == previous:
            return False
        previous = chain
    return True


def _parents(pid: int) -> list[int] | None:
    chain: list[int] = []
    while pid > 1 and len(chain) < 4096:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            return None
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
        chain.append(pid)
    return chain


def _request(state: _State, conn: socket.socket) -> None:
    try:
        data, fds, flags, _ = socket.recv_fds(conn, MAX_REQUEST_BYTES, 3, socket.MSG_CMSG_CLOEXEC)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        data, fds, flags = b"", [], 0
    if not data:
        for fd in fds:
            os.close(fd)
        _drop(state, conn)
        return
    try:
        message = json.loads(data) if not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) else None
        if isinstance(message, dict) and message.get("opened") is True and not fds:
            _opened(state, conn)
            return
        refusal = _refusal(message, fds, state.allowed, flags)
        if refusal:
            _send(conn, {"error": refusal})
            return
        assert isinstance(message, dict)
        _fork(state, conn, message, fds)
    except ValueError:
        _send(conn, {"error": "the request is not JSON"})
    finally:
        for fd in fds:
            os.close(fd)


def _refusal(message: Any, fds: list[int], allowed: frozenset[str], flags: int) -> str:
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or message is None:
        return f"the request is over {MAX_REQUEST_BYTES} bytes or carries too many descriptors"
    if len(fds) != 3:
        return "a request carries exactly three descriptors: stdin, stdout, stderr"
    if not isinstance(message, dict) or not isinstance(message.get("config"), dict):
        return "a request is {config, env}"
    config, env = message["config"], message.get("env")
    if config.get("entry") not in allowed:
        return f"entry {str(config.get('entry'))[:100]!r} is not one this zygote runs"
    if not isinstance(env, dict) or len(env) > MAX_ENV_VARS:
        return "env must be an object of strings"
    if not all(
        isinstance(k, str) and isinstance(v, str) and "=" not in k and "\0" not in k + v for k, v in env.items()
    ):
        return "env must be an object of strings"
    scratch = config.get("scratch")
    if not isinstance(scratch, str) or not os.path.isabs(scratch) or not os.path.isdir(scratch):
        return "scratch must be an existing absolute directory"
    for key, kind in (("limits", dict), ("isolation", dict), ("runtime", list)):
        if not isinstance(config.get(key), kind):
            return f"config.{key} is missing or malformed"
    return ""


def _fork(state: _State, conn: socket.socket, message: dict[str, Any], fds: list[int]) -> None:
    if any(c.conn is conn for c in state.children.values()):
        _send(conn, {"error": "one child per connection"})
        return
    pid = os.fork()
    if pid == 0:
        become_child(fds, message["config"], message["env"], peer_credentials(conn)[0])  # never returns
    child = _Child(pid, conn, os.pidfd_open(pid))
    state.children[pid] = child
    _send(conn, {"pid": pid})


def _opened(state: _State, conn: socket.socket) -> None:
    for child in state.children.values():
        if child.conn is conn and not child.opened:
            child.opened = True
            state.sel.register(child.pidfd, selectors.EVENT_READ, child)


def _child_exited(state: _State, child: _Child) -> None:
    """The child's pidfd is readable: reap it and tell its requester how it ended."""
    try:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere: its status is lost
        pid, status, usage = child.pid, None, None
    if pid == 0:
        return  # not yet
    state.sel.unregister(child.pidfd)
    os.close(child.pidfd)
    state.children.pop(child.pid, None)
    report: dict[str, Any] = {"exit": os.waitstatus_to_exitcode(status) if status is not None else None}
    if usage is not None and status is not None:
        report.update(utime=usage.ru_utime, stime=usage.ru_stime, maxrss_kb=usage.ru_maxrss)
    _send(child.conn, report)


def _drop(state: _State, conn: socket.socket) -> None:
    """The requester hung up: its child (if any) keeps running (it sees EOF on stdin) and is
    reaped without a report; a child whose pid was never taken is reaped now, if done."""
    state.sel.unregister(conn)
    for child in state.children.values():
        if child.conn is conn and not child.opened:
            child.opened = True
            state.sel.register(child.pidfd, selectors.EVENT_READ, child)
    conn.close()


def _reap_orphans(state: _State) -> None:
    """Reap the orphans this subreaper inherited (a child's own children whose parent died),
    never a child of a requester's that still waits for its report."""
    for pid in _my_children():
        if pid not in state.children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def _my_children() -> list[int]:
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.send(json.dumps(message).encode(), socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)


def threads() -> list[str]:
    """This process's threads as "tid:comm" (what the zygote forks with)."""
    out = []
    for tid in sorted(os.listdir("/proc/self/task"), key=int):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/comm") as f:
            out.append(f"{tid}:{f.read().strip()}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tensorgrid.sandbox.zygote")
    parser.add_argument("--socket", required=True, type=Path, help="where to listen (its directory is made 0700)")
    parser.add_argument("--owner", type=int, default=0, help="exit when this process does")
    parser.add_argument("--allow", action="append", default=[], help="a further entry module to run (tests)")
    parser.add_argument(
        "--remove-dir", action="store_true", help="the socket's directory is this zygote's: removed when it ends"
    )
    ns = parser.parse_args(argv)
    allowed = ENTRIES | frozenset(ns.allow)
    if not all(all(p.isidentifier() for p in e.split(".")) for e in allowed):
        parser.error("--allow takes module names")
    confine.forbid_inspection()  # its children (same user) cannot ptrace it; they are made dumpable again
    with contextlib.suppress(OSError):
        confine._libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]  # `-m`'s working directory: its children's imports come from PYTHONPATH
    warm(allowed)
    listener = listen(ns.socket.absolute())
    print(json.dumps({"ready": True, "pid": os.getpid(), "threads": threads()}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(listener, allowed, ns.owner)
    finally:
        with contextlib.suppress(OSError):
            ns.socket.absolute().unlink()
        if ns.remove_dir:  # a temporary directory made for it: not left behind, even if its owner was killed
            with contextlib.suppress(OSError):
                ns.socket.absolute().parent.rmdir()


if __name__ == "__main__":
    main()
