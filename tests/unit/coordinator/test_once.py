"""A keyed request sent again is answered once (coordinator.services.serving.once): not run
twice, so not billed twice; another input under the same key is refused; a failed run is not
kept; the cache's bounds and life."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from coordinator.services.serving.once import Answer, KeyReused, Once

ALICE, BOB = "0x" + "aa" * 20, "0x" + "bb" * 20
EP = "cd" * 32


class Replica:
    """Router.infer as once.run calls it: counts its runs, each answered after `delay_s`."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.runs, self.delay_s, self.fail = 0, delay_s, fail

    def infer(self, data: bytes) -> Callable[[], Awaitable[Answer]]:
        async def run() -> Answer:
            self.runs += 1
            await asyncio.sleep(self.delay_s)
            if self.fail:
                raise TimeoutError("no answer within the request's deadline")
            return b"out:" + data + b":" + str(self.runs).encode(), "node", 1

        return run


def _run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())


def test_a_repeat_of_a_keyed_request_gets_the_first_answer_and_no_run() -> None:
    async def scenario() -> None:
        once, replica = Once(), Replica()
        first = await once.run(ALICE, EP, b"k1", b"x", replica.infer(b"x"))
        again = await once.run(ALICE, EP, b"k1", b"x", replica.infer(b"x"))
        assert first == again and replica.runs == 1 and once.repeats == 1
        other = await once.run(ALICE, EP, b"k2", b"x", replica.infer(b"x"))  # another request, same input
        assert other != first and replica.runs == 2
        for _ in range(2):  # no key: every send runs
            await once.run(ALICE, EP, b"", b"x", replica.infer(b"x"))
        assert replica.runs == 4

    _run(scenario)


def test_a_repeat_while_the_first_is_in_flight_waits_for_it() -> None:
    async def scenario() -> None:
        once, replica = Once(), Replica(delay_s=0.05)
        answers = await asyncio.gather(*(once.run(ALICE, EP, b"k", b"x", replica.infer(b"x")) for _ in range(3)))
        assert replica.runs == 1 and len(set(answers)) == 1

    _run(scenario)


def test_another_input_under_a_used_key_is_refused() -> None:
    async def scenario() -> None:
        once, replica = Once(), Replica()
        await once.run(ALICE, EP, b"k", b"x", replica.infer(b"x"))
        with pytest.raises(KeyReused, match="another input"):
            await once.run(ALICE, EP, b"k", b"y", replica.infer(b"y"))
        with pytest.raises(KeyReused, match="at most 32 bytes"):
            await once.run(ALICE, EP, b"k" * 33, b"x", replica.infer(b"x"))
        assert replica.runs == 1

    _run(scenario)


def test_keys_are_per_caller_and_endpoint() -> None:
    async def scenario() -> None:
        once, replica = Once(), Replica()
        mine = await once.run(ALICE, EP, b"k", b"x", replica.infer(b"x"))
        theirs = await once.run(BOB, EP, b"k", b"x", replica.infer(b"x"))  # a guessed key: its own run
        elsewhere = await once.run(ALICE, "ef" * 32, b"k", b"x", replica.infer(b"x"))
        assert replica.runs == 3 and len({mine, theirs, elsewhere}) == 3

    _run(scenario)


def test_a_failed_run_is_not_kept_and_its_repeat_runs_again() -> None:
    async def scenario() -> None:
        once, failing = Once(), Replica(fail=True)
        with pytest.raises(TimeoutError):
            await once.run(ALICE, EP, b"k", b"x", failing.infer(b"x"))
        replica = Replica()
        await once.run(ALICE, EP, b"k", b"x", replica.infer(b"x"))
        assert failing.runs == 1 and replica.runs == 1

    _run(scenario)


def test_answers_are_kept_a_minute_and_within_bounds() -> None:
    async def scenario() -> None:
        now = [0.0]
        once, replica = Once(keep_s=60.0, max_entries=2, clock=lambda: now[0]), Replica()
        for key in (b"a", b"b", b"c"):  # three answers, two kept: the oldest goes
            await once.run(ALICE, EP, key, b"x", replica.infer(b"x"))
        await once.run(ALICE, EP, b"c", b"x", replica.infer(b"x"))
        assert replica.runs == 3
        await once.run(ALICE, EP, b"a", b"x", replica.infer(b"x"))
        assert replica.runs == 4
        now[0] = 61.0  # a minute later every answer is gone
        await once.run(ALICE, EP, b"a", b"x", replica.infer(b"x"))
        assert replica.runs == 5
        small = Once(max_bytes=64)  # and within the bytes kept
        await small.run(ALICE, EP, b"big", b"x" * 100, replica.infer(b"x" * 100))
        await small.run(ALICE, EP, b"big", b"x" * 100, replica.infer(b"x" * 100))
        assert replica.runs == 7

    _run(scenario)


def test_expiry_and_the_bounds_pass_over_requests_in_flight_and_drop_only_what_they_must() -> None:
    """_expire and _trim read the table from its oldest end and stop early (they run with every
    keyed request): what they drop is still every expired answer behind a request in flight,
    and the oldest answers until both bounds hold, never one in flight."""

    async def scenario() -> None:
        now, gate = [0.0], asyncio.Event()
        once, replica = Once(keep_s=60.0, max_entries=4, clock=lambda: now[0]), Replica()
        slow_runs = [0]

        async def slow() -> Answer:
            slow_runs[0] += 1
            await gate.wait()
            return b"slow", "node", 1

        in_flight = asyncio.create_task(once.run(ALICE, EP, b"slow", b"x", slow))
        await asyncio.sleep(0)
        await once.run(ALICE, EP, b"a", b"x", replica.infer(b"x"))  # answered at 0
        now[0] = 30.0
        await once.run(ALICE, EP, b"b", b"x", replica.infer(b"x"))  # answered at 30
        now[0] = 61.0  # a expired (behind the one in flight), b not
        await once.run(ALICE, EP, b"c", b"x", replica.infer(b"x"))
        await once.run(ALICE, EP, b"b", b"x", replica.infer(b"x"))
        assert replica.runs == 3  # b kept
        await once.run(ALICE, EP, b"a", b"x", replica.infer(b"x"))
        assert replica.runs == 4  # a was gone: it ran again (slow, b, c, a: within 4)
        await once.run(ALICE, EP, b"d", b"x", replica.infer(b"x"))  # 5 entries: b, the oldest answered, goes
        await once.run(ALICE, EP, b"b", b"x", replica.infer(b"x"))
        assert replica.runs == 6  # (and c goes for it: slow, in flight, stays)
        repeat = asyncio.create_task(once.run(ALICE, EP, b"slow", b"x", slow))
        gate.set()
        assert await in_flight == await repeat == (b"slow", "node", 1) and slow_runs[0] == 1

        small = Once(max_bytes=100)  # bytes: as many of the oldest go as the newest needs
        for key in (b"1", b"2", b"3", b"4"):
            await small.run(ALICE, EP, key, b"x" * 10, replica.infer(b"x" * 10))  # 10 + 17 bytes each
        await small.run(ALICE, EP, b"big", b"y" * 40, replica.infer(b"y" * 40))  # 40 + 47
        runs = replica.runs
        await small.run(ALICE, EP, b"big", b"y" * 40, replica.infer(b"y" * 40))
        await small.run(ALICE, EP, b"4", b"x" * 10, replica.infer(b"x" * 10))
        assert replica.runs == runs + 1  # big kept, 4 gone too (27 + 87 > 100)

    _run(scenario)
