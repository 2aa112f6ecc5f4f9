"""The coordinator's garbage collector upkeep (services.collector): what survives a young
collection is frozen out of the automatic full collections' walk, and cyclic garbage among
frozen objects is still found, at the next sweep."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from coordinator.services import collector


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process's other tests see the collector as it was


def test_frozen_survivors_are_skipped_by_full_collections_and_their_cycles_found_by_the_sweep() -> None:
    young = Node()
    gone = weakref.ref(young)
    del young
    collector.freeze_survivors()  # a cycle that is garbage already dies in the young collection
    assert gone() is None
    old = Node()
    kept = weakref.ref(old)
    collector.freeze_survivors()  # alive now: frozen
    assert gc.get_objects(generation=2) == [] and gc.get_freeze_count() > 0
    del old
    gc.collect()  # a full collection does not walk what is frozen ...
    assert kept() is not None
    assert collector.sweep() >= 1  # ... the sweep does, and freezes again what is alive
    assert kept() is None
    assert gc.get_objects(generation=2) == []


def test_the_upkeep_freezes_each_interval_and_sweeps_once_per_sweep_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    calls: list[str] = []
    monkeypatch.setattr(collector, "freeze_survivors", lambda: calls.append("freeze"))
    monkeypatch.setattr(collector, "sweep", lambda: calls.append("sweep") or 0)

    async def run() -> None:
        task = asyncio.create_task(collector.keep_old_objects_frozen(0.0, 10.0, clock=lambda: now[0]))
        for _ in range(25):
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            now[0] += 1.0
        task.cancel()

    asyncio.run(run())
    assert calls.count("sweep") == 2 and calls.count("freeze") >= 18
    assert calls.index("sweep") >= 9  # not before the first sweep interval
