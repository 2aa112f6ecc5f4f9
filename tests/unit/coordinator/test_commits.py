"""Group commit: many requests, one call; each caller gets its own outcome."""

from __future__ import annotations

import asyncio
import time

import pytest

from coordinator.commits import GroupCommitter
from coordinator.errors import Rejected


def test_concurrent_requests_share_a_call_and_get_their_own_outcomes() -> None:
    calls: list[list[int]] = []

    async def run(batch: list[int]) -> list[int | Rejected]:
        calls.append(batch)
        return [Rejected(f"odd {x}") if x % 2 else x * 10 for x in batch]

    async def scenario() -> list[object]:
        committer: GroupCommitter[int, int] = GroupCommitter(run)
        return await asyncio.gather(*(committer.submit(i) for i in range(6)), return_exceptions=True)

    results = asyncio.run(scenario())
    assert calls == [[0, 1, 2, 3, 4, 5]]
    assert results[0::2] == [0, 20, 40]
    assert all(
        isinstance(r, Rejected) and str(r) == f"odd {i}" for i, r in zip(range(1, 6, 2), results[1::2], strict=True)
    )


def test_a_failed_transaction_fails_every_caller_in_it() -> None:
    async def run(batch: list[int]) -> list[int]:
        raise RuntimeError("database went away")

    async def scenario() -> None:
        committer: GroupCommitter[int, int] = GroupCommitter(run)
        with pytest.raises(RuntimeError, match="went away"):
            await asyncio.gather(committer.submit(1), committer.submit(2))

    asyncio.run(scenario())


def test_later_requests_get_a_new_batch() -> None:
    calls: list[list[int]] = []

    async def run(batch: list[int]) -> list[int]:
        calls.append(batch)
        return batch

    async def scenario() -> None:
        committer: GroupCommitter[int, int] = GroupCommitter(run)
        assert await committer.submit(1) == 1
        assert await committer.submit(2) == 2

    asyncio.run(scenario())
    assert calls == [[1], [2]]


@pytest.mark.parametrize(("busy_s", "third_s", "batches"), [(0.24, 0.4, [[1, 2, 3]]), (0.0, 0.25, [[1, 2], [3]])])
def test_a_flush_on_a_busy_loop_waits_longer_while_requests_keep_joining(
    busy_s: float, third_s: float, batches: list[list[int]]
) -> None:
    # Timers fire in deadline order. Request 2 joins during the flush's first wait (0.15 s); on the
    # busy loop, a callback holds the loop first, so that wait ends late (at 0.33 s, over twice its
    # length) and the flush waits again, until 0.48 s: request 3 (0.40 s) joins. On an idle loop the
    # first wait ends on time and so does the gathering: request 3 (0.25 s) goes in a batch of its own.
    calls: list[list[int]] = []

    async def run(batch: list[int]) -> list[int]:
        calls.append(batch)
        return batch

    async def scenario() -> None:
        committer: GroupCommitter[int, int] = GroupCommitter(run, delay_s=0.15, gather_max_s=0.6)

        async def later(request: int, after_s: float, hold_s: float = 0.0) -> int:
            await asyncio.sleep(after_s)
            time.sleep(hold_s)  # a busy loop: nothing else runs meanwhile
            return await committer.submit(request)

        second, third = later(2, 0.09, busy_s), later(3, third_s)
        assert await asyncio.gather(committer.submit(1), second, third) == [1, 2, 3]

    asyncio.run(scenario())
    assert calls == batches
