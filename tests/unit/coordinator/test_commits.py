"""Group commit: many requests, one call; each caller gets its own outcome."""

from __future__ import annotations

import asyncio

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


@pytest.mark.parametrize(("gather_max_s", "batches"), [(0.2, [[1, 2, 3]]), (0.05, [[1, 2], [3]])])
def test_a_flush_waits_longer_while_requests_keep_joining(gather_max_s: float, batches: list[list[int]]) -> None:
    # Timers fire in deadline order: request 2 joins during the flush's first wait, request 3 during
    # its second, which only a flush allowed more than one wait takes.
    calls: list[list[int]] = []

    async def run(batch: list[int]) -> list[int]:
        calls.append(batch)
        return batch

    async def scenario() -> None:
        committer: GroupCommitter[int, int] = GroupCommitter(run, delay_s=0.05, gather_max_s=gather_max_s)

        async def later(request: int, after_s: float) -> int:
            await asyncio.sleep(after_s)
            return await committer.submit(request)

        assert await asyncio.gather(committer.submit(1), later(2, 0.03), later(3, 0.08)) == [1, 2, 3]

    asyncio.run(scenario())
    assert calls == batches


def test_without_drain_a_steady_stream_makes_one_batch_per_delay() -> None:
    # Heartbeats: a request every 5 ms for 0.5 s, each batch's transaction 10 ms. Drained, the
    # requests that came during a batch ran right after it (a batch every ~10 ms); without drain
    # they wait the 50 ms in the next flush, so about ten batches in all. The bound is one batch
    # per delay of the time the stream really took: on a loaded machine each 5 ms sleep overshoots.
    calls: list[list[int]] = []
    took: list[float] = []

    async def run(batch: list[int]) -> list[int]:
        calls.append(batch)
        await asyncio.sleep(0.01)
        return batch

    async def scenario() -> None:
        committer: GroupCommitter[int, int] = GroupCommitter(run, delay_s=0.05, drain=False)
        loop = asyncio.get_running_loop()
        start = loop.time()
        submitted = []
        for i in range(100):
            submitted.append(asyncio.ensure_future(committer.submit(i)))
            await asyncio.sleep(0.005)
        assert await asyncio.gather(*submitted) == list(range(100))
        took.append(loop.time() - start)

    asyncio.run(scenario())
    assert sorted(r for batch in calls for r in batch) == list(range(100))
    assert len(calls) <= took[0] / 0.05 + 2, ([len(b) for b in calls], took)
