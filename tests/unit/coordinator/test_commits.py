"""Group commit: many requests, one call; each caller gets its own outcome."""

from __future__ import annotations

import asyncio
import contextvars
import time

import grpc
import pytest

from coordinator.api.arrivals import RESULT_METHODS, ArrivalsInterceptor, committer_routes
from coordinator.commits import Arrivals, GroupCommitter
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


def test_with_arrivals_a_lone_request_commits_at_once() -> None:
    # Nothing is on its way: the flush does not wait delay_s (here far longer than the test allows).
    calls: list[list[int]] = []

    async def run(batch: list[int]) -> list[int]:
        calls.append(batch)
        return batch

    async def scenario() -> float:
        committer: GroupCommitter[int, int] = GroupCommitter(run, delay_s=5.0, gather_max_s=10.0, arrivals=Arrivals())
        started = time.monotonic()
        assert await committer.submit(1) == 1
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0
    assert calls == [[1]]


def test_with_arrivals_a_flush_waits_for_a_call_on_its_way() -> None:
    calls: list[list[int]] = []

    async def run(batch: list[int]) -> list[int]:
        calls.append(batch)
        return batch

    async def scenario() -> None:
        arrivals = Arrivals(horizon_s=5.0)
        committer: GroupCommitter[int, int] = GroupCommitter(run, delay_s=0.01, gather_max_s=5.0, arrivals=arrivals)

        async def on_its_way(request: int) -> int:
            arrivals.expect()  # its RPC started; its request joins 50 ms later
            await asyncio.sleep(0.05)
            return await committer.submit(request)

        second = asyncio.create_task(on_its_way(2))
        await asyncio.sleep(0)  # the second call has started
        assert await asyncio.gather(committer.submit(1), second) == [1, 2]
        assert arrivals.coming() == 0

    asyncio.run(scenario())
    assert calls == [[1, 2]]


def test_with_arrivals_a_call_that_never_joins_delays_a_flush_at_most_gather_max() -> None:
    calls: list[list[int]] = []

    async def run(batch: list[int]) -> list[int]:
        calls.append(batch)
        return batch

    async def scenario() -> float:
        arrivals = Arrivals(horizon_s=5.0)
        committer: GroupCommitter[int, int] = GroupCommitter(run, delay_s=0.01, gather_max_s=0.1, arrivals=arrivals)

        async def refused_early() -> None:
            arrivals.expect()  # started, then refused before it reached the committer

        await asyncio.create_task(refused_early())
        started = time.monotonic()
        assert await committer.submit(1) == 1
        return time.monotonic() - started

    waited = asyncio.run(scenario())
    assert 0.09 <= waited < 2.0
    assert calls == [[1]]


def test_arrivals_count_each_call_once_until_it_joins_or_its_horizon_passes() -> None:
    now = [100.0]
    arrivals = Arrivals(horizon_s=0.002, clock=lambda: now[0])

    def call(joins: bool) -> None:
        arrivals.expect()
        if joins:
            arrivals.arrived()
            arrivals.arrived()  # a second join of the same call (e.g. a long poll asking again): no change

    contextvars.copy_context().run(call, True)
    contextvars.copy_context().run(call, False)
    contextvars.copy_context().run(call, False)
    assert arrivals.coming() == 2
    contextvars.copy_context().run(arrivals.arrived)  # a call never expected: nothing to count off
    assert arrivals.coming() == 2
    now[0] += 0.003
    assert arrivals.coming() == 0


def test_arrivals_interceptor_counts_a_call_from_its_start_to_its_join_over_grpc() -> None:
    # A real grpc.aio server: the count taken in the interceptor is the handler's to count off.
    arrivals = Arrivals(horizon_s=60.0)
    seen: list[int] = []

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(arrivals.coming())  # this call is on its way until it joins
        arrivals.arrived()
        seen.append(arrivals.coming())
        return request

    async def scenario() -> None:
        method = RESULT_METHODS[0]
        service, name = method.strip("/").split("/")
        generic = grpc.method_handlers_generic_handler(service, {name: grpc.unary_unary_rpc_method_handler(handler)})
        server = grpc.aio.server(interceptors=[ArrivalsInterceptor(committer_routes(arrivals, None))])
        server.add_generic_rpc_handlers((generic,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert await channel.unary_unary(method)(b"x") == b"x"
        finally:
            await server.stop(None)

    asyncio.run(scenario())
    assert seen == [1, 0]
    assert arrivals.coming() == 0
