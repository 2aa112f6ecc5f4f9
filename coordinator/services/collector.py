"""Python's garbage collector kept from stopping the coordinator for long.

What the full collections walked. Every connected node holds a LeaseTasks long poll for up to
25 s, and each poll in flight is about 64 objects the collector tracks: gRPC's call state (its
servicer context, RPC state, seven Cython coroutines, their callbacks), the handler's seven
coroutines (interceptors, service, scheduler, wait), their tasks, futures, timer and contexts
(counted by gc.get_objects() in a coordinator with 300 and 500 idle nodes). They outlive the
young generations, so they land in the old one, and since the polls renew every 25 s a quarter
of it is new every ~6 s: Python then runs a full collection, which walks all of it. At 5,000
idle nodes that was ~320,000 objects, 150–550 ms with the process stopped, every 5–7 s
(benchmarks.fleet). Fewer objects per poll would shorten each pause in proportion; the seven
gRPC coroutines and the call state are most of them and not ours to cut.

What this does instead: every FREEZE_EVERY_S, one young collection (generations 0 and 1:
cycles among new objects are found as before), then gc.freeze(): what survived moves to the
permanent generation, which no automatic collection walks. The automatic full collections
then walk only what survived since the last freeze: a few milliseconds.

Why it cannot leak without bound: a frozen object is still freed by reference counting the
moment its last reference goes (a long poll that ends frees its objects as before); freezing
hides only garbage in reference cycles. Every SWEEP_EVERY_S, gc.unfreeze() and one full
collection find exactly that garbage (how much is logged), then everything left is frozen
again. Cyclic garbage therefore lives at most SWEEP_EVERY_S + FREEZE_EVERY_S: memory is bounded
by what the process makes of it in that time, and the process pays one full collection per
sweep instead of one every few seconds."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("tensorgrid.coordinator")
FREEZE_EVERY_S = 1.0
SWEEP_EVERY_S = 600.0


def freeze_survivors() -> None:
    """One young collection, then everything that survived it out of the automatic collections' sight."""
    gc.collect(1)
    gc.freeze()


def sweep() -> int:
    """A full collection over everything, the frozen objects included, then all frozen again;
    returns how many unreachable objects it found."""
    gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    return found


async def keep_old_objects_frozen(
    freeze_s: float = FREEZE_EVERY_S, sweep_s: float = SWEEP_EVERY_S, clock: Callable[[], float] = time.monotonic
) -> None:
    """Freeze what survives every freeze_s, sweep every sweep_s, until cancelled."""
    swept = clock()
    while True:
        await asyncio.sleep(freeze_s)
        if clock() - swept < sweep_s:
            freeze_survivors()
            continue
        started = time.perf_counter()
        found = sweep()
        swept = clock()
        log.info(
            "garbage collector sweep: %d unreachable objects of the last %.0f s, %.0f ms, %d objects frozen",
            found,
            sweep_s,
            1000 * (time.perf_counter() - started),
            gc.get_freeze_count(),
        )
