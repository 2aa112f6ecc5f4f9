"""The first steps of a child the zygote forked (tensorgrid.sandbox.zygote), up to boot.run.

What an exec'd child gets from its parent's Popen (its pipes on 0/1/2, no other descriptor, a
session of its own, the scratch directory as cwd, the environment it was given) and from a fresh
interpreter (fresh stdio objects, a random seed, default signal handling, a dumpable process),
this makes by hand; then boot.run confines it and runs the entry exactly as in an exec'd child.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import signal
import sys
import traceback
from typing import Any, NoReturn

from tensorgrid.sandbox import boot

PR_SET_DUMPABLE = 4


def become_child(fds: list[int], config: dict[str, Any], env: dict[str, str], requester: int = 0) -> NoReturn:
    """Run the sandboxed child in this fresh fork; exit with its status, never return."""
    code = 1
    try:
        _detach(fds)
        retitle(["tensorgrid.sandbox.boot", str(config["entry"]), f"for={requester}"])
        _reset_interpreter(config, env)
        boot.run(config)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if code == 1 and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported on stderr, as an interpreter would
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code & 0xFF)


def _detach(fds: list[int]) -> None:
    """A session of its own; the requester's pipes on 0, 1, 2 and no other descriptor (the
    zygote's socket, its connections and its other children's pidfds are closed)."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)  # inheritable, as a Popen child's stdio
    os.closerange(3, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
    boot.confine._libc().prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # the zygote is not; its parent reads /proc


def _reset_interpreter(config: dict[str, Any], env: dict[str, str]) -> None:
    """The environment it was given (PYTHON* variables acted on as a new interpreter would),
    fresh stdio objects on the new descriptors, a random seed of its own, its scratch as cwd."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(config["scratch"])
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding="utf-8")
    sys.stdout = _writer(1, unbuffered)
    sys.stderr = _writer(2, True)
    for name in ("stdin", "stdout", "stderr"):  # what a fresh interpreter's sys.__stdout__ etc. are
        setattr(sys, f"__{name}__", getattr(sys, name))
    sys.argv = [boot.__file__, "(forked by tensorgrid.sandbox.zygote)"]
    sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
    random.seed()  # Python reseeds at fork too: explicit, as a fresh interpreter seeds
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)


def retitle(args: list[str]) -> None:
    """Rewrite this process's command line (/proc/PID/cmdline, what ps shows) in the memory it
    is read from: `ps` and the tests see a forked child as `tensorgrid.sandbox.boot ENTRY
    for=REQUESTER` rather than as the zygote. Cut to the zygote's own command line's length."""
    import ctypes

    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48 and 49)
    except (OSError, ValueError, IndexError):
        return
    room = end - start
    title = b"\0".join(a.encode() for a in args)[: room - 1]
    if room > 1:
        ctypes.memmove(start, title.ljust(room, b"\0"), room)


def _writer(fd: int, unbuffered: bool) -> io.TextIOWrapper:
    buffered = open(fd, "wb", closefd=False)
    return io.TextIOWrapper(
        buffered, encoding="utf-8", errors="backslashreplace", line_buffering=True, write_through=unbuffered
    )
