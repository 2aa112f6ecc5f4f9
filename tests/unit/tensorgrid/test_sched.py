"""tensorgrid.sched: a short slice for the calling thread alone, its nice kept, never inherited."""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from tensorgrid.sched import _ATTR, _SYS_SCHED_SETATTR, REQUEST_SLICE_US, short_slice

_SYS_SCHED_GETATTR = {"x86_64": 315, "aarch64": 275}
T = TypeVar("T")


def _attr() -> tuple[int, ...]:
    """This thread's struct sched_attr."""
    buf = ctypes.create_string_buffer(struct.calcsize(_ATTR))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(_SYS_SCHED_GETATTR[platform.machine()], 0, buf, len(buf), 0) == 0
    return struct.unpack(_ATTR, buf.raw)


def _in_a_thread(fn: Callable[[], T]) -> T:
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


@pytest.mark.skipif(platform.machine() not in _SYS_SCHED_SETATTR, reason="no sched_setattr number for this machine")
def test_the_thread_that_asks_gets_the_slice_its_nice_kept_and_threads_it_starts_do_not() -> None:
    def ask() -> tuple[bool, tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        os.setpriority(os.PRIO_PROCESS, 0, 3)  # this thread's nice (Linux: per thread)
        default = _attr()
        took = short_slice()
        return took, default, _attr(), _in_a_thread(_attr)

    took, default, mine, child = _in_a_thread(ask)
    if not took:
        pytest.skip("this kernel has no slice of a thread's own (Linux < 6.12)")
    assert mine[5] == REQUEST_SLICE_US * 1000 and mine[3] == 3 and mine[1] == 0  # slice; nice and policy kept
    assert child[5] == default[5] != mine[5]  # reset on fork: a thread it starts has the default
    assert _attr()[5] == default[5]  # and the others are untouched
