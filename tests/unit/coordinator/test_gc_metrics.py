"""The coordinator times its garbage collections (tensorgrid_gc_pause_seconds, by generation)
while its watcher runs, and leaves the collector alone once the watcher is cancelled."""

from __future__ import annotations

import asyncio
import gc

from coordinator.services.metrics import Metrics


def _count(m: Metrics, generation: str) -> float:
    return m.registry.get_sample_value("tensorgrid_gc_pause_seconds_count", {"generation": generation}) or 0.0


def test_full_collections_are_timed_while_watched_and_not_after() -> None:
    m = Metrics()
    callbacks = len(gc.callbacks)

    async def run() -> None:
        watcher = asyncio.ensure_future(m.watch_gc())
        await asyncio.sleep(0)  # the watcher installs its callback
        gc.collect()
        gc.collect(0)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

    asyncio.run(run())
    assert _count(m, "2") >= 1 and _count(m, "0") >= 1
    assert (m.registry.get_sample_value("tensorgrid_gc_pause_seconds_sum", {"generation": "2"}) or 0.0) > 0
    assert len(gc.callbacks) == callbacks  # the watcher's callback went with it
    full = _count(m, "2")
    gc.collect()
    assert _count(m, "2") == full
