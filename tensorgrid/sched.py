"""A scheduler hint for the threads a served request waits on: a short slice.

Linux's fair scheduler (EEVDF, 6.6 and later; a slice of one's own from 6.12) gives each
thread a slice, by default ~0.7 ms times a factor for the core count (1.4 ms on two cores).
A thread that wakes preempts the running one only if its own deadline (its virtual runtime
plus its slice) comes first. On a busy machine the request path's threads (the coordinator's
event loop, a serving worker's data link) woke behind threads that run for milliseconds at a
time (a node signing a burst of receipts, a check's rerun, anything else on the machine) and
waited out their slice: most of the slowest 1% of requests at 1 client were such waits (one
hop several milliseconds instead of ~0.1). A short slice puts a waking thread first. It is no priority:
its share of the CPU stays its nice value's, it is only preempted sooner in turn, so
no privilege is needed and a thread cannot take more than before with it.

Only the calling thread gets it; threads and processes it starts afterwards get the default
(SCHED_FLAG_RESET_ON_FORK): the database threads, the referee and its children keep theirs.
The coordinator lets the threads gRPC makes with its server inherit it (a call's message
passes through them before the event loop sees it), then takes that back.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

__all__ = ["REQUEST_SLICE_US", "short_slice"]

REQUEST_SLICE_US = 100  # the kernel's least
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}
_SCHED_OTHER = 0
_RESET_ON_FORK = 0x01
_ATTR = "IIQiIQQQII"  # struct sched_attr (size, policy, flags, nice, priority, runtime, …, util_min/max)


def short_slice(slice_us: int = REQUEST_SLICE_US, *, inherited: bool = False) -> bool:
    """Give the calling thread a scheduler slice of slice_us (its nice kept); True if the
    kernel took it, False where it has no such setting (other systems, older kernels).
    inherited: the threads it starts from now on take it too (until it is called again without)."""
    number = _SYS_SCHED_SETATTR.get(platform.machine())
    if number is None or not hasattr(os, "getpriority"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        nice = os.getpriority(os.PRIO_PROCESS, 0)
    except OSError:
        return False
    size = struct.calcsize(_ATTR)
    flags = 0 if inherited else _RESET_ON_FORK
    attr = struct.pack(_ATTR, size, _SCHED_OTHER, flags, nice, 0, slice_us * 1000, 0, 0, 0, 0)
    return int(libc.syscall(number, 0, ctypes.c_char_p(attr), 0)) == 0
