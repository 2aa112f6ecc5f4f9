"""A daemon started by and for one program (a test, the demo, a benchmark) ends when that
program does (`--owner PID`), however the program ended: a SIGKILL, a cancelled CI job.

The daemon watches its owner's pidfd from a thread rather than asking the kernel for a signal at
its parent's death (PR_SET_PDEATHSIG): that signal comes when the parent *thread* that started
it ends, and fixtures start processes from whatever thread they run in; setting it in the forked
child (`preexec_fn`) also runs Python between fork and exec, which gRPC's fork handlers abort
when the parent has live channels. Once the owner is gone the daemon gets SIGTERM, so it stops
as it does for an operator (its children stopped by it); should that take longer than
STOP_GRACE_S it is killed. Nothing here runs unless the flag is given: a daemon an operator or
systemd starts outlives whoever started it.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time

from tensorgrid.processes import exists

log = logging.getLogger("tensorgrid.owner")
STOP_GRACE_S = 10.0  # SIGTERM to SIGKILL: a node's drain of its task, a coordinator's shutdown
POLL_S = 1.0  # where there is no pidfd (not Linux): how often the owner is looked for


def pid(raw: str) -> int:
    """--owner's value: a process id, or 0 for none."""
    value = int(raw)
    if value < 0:
        raise ValueError(f"not a process id: {raw!r}")
    return value


def watch(owner: int, grace_s: float = STOP_GRACE_S) -> threading.Thread | None:
    """From now on, SIGTERM this process when process `owner` ends (at once if it already has),
    and SIGKILL it `grace_s` later if it still runs. 0: no owner, nothing watched."""
    if not owner:
        return None
    try:
        fd: int | None = os.pidfd_open(owner)
    except ProcessLookupError:
        fd = -1  # gone before we looked: stop now
    except (AttributeError, OSError):
        fd = None  # no pidfd here: poll
    thread = threading.Thread(target=_stop_after, args=(owner, fd, grace_s), name="owner-watch", daemon=True)
    thread.start()
    return thread


def _stop_after(owner: int, fd: int | None, grace_s: float) -> None:
    if fd is None:
        while exists(owner):
            time.sleep(POLL_S)
    elif fd >= 0:
        select.select([fd], [], [])
    log.warning("the process that started us (pid %d) has ended: stopping", owner)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    log.error("still running %.0f s after our owner ended: killed", grace_s)
    os.kill(os.getpid(), signal.SIGKILL)
