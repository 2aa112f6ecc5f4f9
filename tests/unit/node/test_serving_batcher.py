"""node.serving.batcher: the dynamic batching policy, with in-memory fakes (no worker, no clock waits)."""

from __future__ import annotations

import asyncio

import pytest

from node.serving.batcher import Batcher, Pending, Policy

INF = float("inf")


@pytest.mark.parametrize(
    ("queued", "now", "last", "since", "want"),
    [
        (0, 5.0, 0.0, 0.0, (0, INF)),  # nothing to run
        (1, 5.0, 5.0, 5.0, (1, 0.0)),  # a lone request runs at once, however recent
        (8, 5.0, 5.0, 5.0, (8, 0.0)),  # a full batch runs at once
        (9, 5.0, 5.0, 5.0, (8, 0.0)),  # never more than max_batch
        (3, 5.0, 5.0, 5.0, (0, 5.01)),  # more arriving: wait, at most max_delay
        (3, 5.0, 4.999, 4.995, (0, 5.005)),  # …from when the worker was free
        (3, 5.0, 4.98, 4.97, (3, 0.0)),  # nothing arrived for max_delay: run them
        (3, 5.02, 5.0, 5.0, (3, 0.0)),  # waited max_delay: run them
    ],
)
def test_policy(queued: int, now: float, last: float, since: float, want: tuple[int, float]) -> None:
    take, until = Policy(max_batch=8, max_delay_us=10_000).decide(queued, now, last, since)
    assert take == want[0]
    assert until == pytest.approx(want[1])


def test_no_delay_means_whatever_is_queued() -> None:
    assert Policy(max_batch=8, max_delay_us=0).decide(3, 1.0, 1.0, 1.0) == (3, 0.0)


class Fake:
    """A worker that records batches and runs each one until the test lets it finish."""

    def __init__(self, policy: Policy, now_ms: float = 1_000_000.0) -> None:
        self.batches: list[list[int]] = []
        self.expired: list[int] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.clock = [100.0]
        self.now_ms = now_ms
        self.batcher = Batcher(
            policy,
            self.run,
            lambda p: self.expired.append(p.request_id),
            wall_ms=lambda: self.now_ms,
            monotonic=lambda: self.clock[0],
        )

    async def run(self, batch: list[Pending]) -> None:
        self.batches.append([p.request_id for p in batch])
        self.started.set()
        await self.release.wait()
        self.release.clear()

    def submit(self, *ids: int, deadline_ms: int = 0) -> None:
        for i in ids:
            self.batcher.submit(Pending(i, b"", deadline_ms=deadline_ms))


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_lone_request_runs_at_once_and_a_burst_behind_it_is_batched() -> None:
    async def scenario() -> None:
        fake = Fake(Policy(max_batch=4, max_delay_us=60_000_000))  # a minute: a wait would hang the test
        runner = asyncio.create_task(fake.batcher.run())
        fake.submit(1)
        await asyncio.wait_for(fake.started.wait(), 5)
        assert fake.batches == [[1]]
        fake.submit(2, 3, 4, 5, 6)  # queued behind the running batch
        fake.release.set()
        await _settle()
        assert fake.batches == [[1], [2, 3, 4, 5]]  # full: at once
        fake.release.set()
        await _settle()
        assert fake.batches == [[1], [2, 3, 4, 5], [6]]  # alone: at once
        fake.batcher.close()
        fake.release.set()
        await asyncio.wait_for(runner, 5)

    asyncio.run(scenario())


def test_a_partial_batch_waits_only_while_more_are_arriving() -> None:
    async def scenario() -> None:
        fake = Fake(Policy(max_batch=3, max_delay_us=60_000_000))
        fake.submit(1, 2)  # still arriving (the fake clock stands still): wait for more
        waiting = asyncio.create_task(fake.batcher.next_batch())
        await _settle()
        assert not waiting.done()
        fake.submit(3)  # the batch is full: it goes
        assert [p.request_id for p in await asyncio.wait_for(waiting, 5)] == [1, 2, 3]

        fake.submit(4, 5)
        fake.clock[0] += 61  # nothing arrived for longer than max_delay: no reason to wait
        assert [p.request_id for p in await asyncio.wait_for(fake.batcher.next_batch(), 5)] == [4, 5]

    asyncio.run(scenario())


def test_late_and_cancelled_requests_are_dropped_before_they_run() -> None:
    async def scenario() -> None:
        fake = Fake(Policy(max_batch=8, max_delay_us=0), now_ms=10_000.0)
        fake.submit(1, deadline_ms=9_000)  # past
        fake.submit(2, deadline_ms=9_990)  # within the clock allowance: still runs
        fake.submit(3, deadline_ms=0)  # no deadline
        fake.submit(4, 5)
        assert fake.batcher.cancel(4) and not fake.batcher.cancel(99)
        batch = await asyncio.wait_for(fake.batcher.next_batch(), 5)
        assert [p.request_id for p in batch] == [2, 3, 5]
        assert fake.expired == [1]

    asyncio.run(scenario())


def test_close_hands_back_what_never_ran() -> None:
    async def scenario() -> None:
        fake = Fake(Policy(max_batch=8, max_delay_us=0))
        fake.submit(1, 2)
        assert [p.request_id for p in fake.batcher.close()] == [1, 2]
        assert await asyncio.wait_for(fake.batcher.next_batch(), 5) == []
        fake.submit(3)  # after close: ignored
        assert len(fake.batcher) == 0

    asyncio.run(scenario())
