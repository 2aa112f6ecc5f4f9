"""The coordinator's executors: work that waits for the referee never holds the work threads."""

from __future__ import annotations

import asyncio
import threading
import time

from coordinator.services.runtime import Runtime


def test_work_waiting_for_the_referee_leaves_the_work_threads_free() -> None:
    # The referee answers one request at a time, each for up to --referee-time-s, and its start
    # imports torch. Calls waiting for it once held both work threads, so results' checks
    # (check_output) waited behind them for minutes, past the nodes' deadlines.
    rt = Runtime(inline_db=True, db_threads=1, work_threads=2)
    release = threading.Event()
    order: list[int] = []

    def referee_call(i: int) -> None:
        release.wait(30)
        order.append(i)

    async def main() -> float:
        waiting = [asyncio.ensure_future(rt.refereed(referee_call, i)) for i in range(4)]
        await asyncio.sleep(0.2)
        began = time.monotonic()
        assert await asyncio.wait_for(rt.work(lambda: 42), 10) == 42
        took = time.monotonic() - began
        release.set()
        await asyncio.gather(*waiting)
        return took

    try:
        assert asyncio.run(main()) < 5
        assert order == [0, 1, 2, 3]  # the referee's work is done in the order asked
    finally:
        release.set()
        rt.shutdown()
