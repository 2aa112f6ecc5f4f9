"""The heartbeat clock: beats keep their own phase whatever the answers take, nodes that
registered together spread over the idle interval, and a node holding leases beats within the
Register interval."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from tensorgrid.heartbeats import HeartbeatClock


@dataclass
class Told:
    """What a coordinator told a node: 5 s at Register, 20 s in its paced heartbeat answers."""

    heartbeat_s: float = 5.0
    idle_heartbeat_s: float = 5.0


def beats(
    clock: HeartbeatClock,
    told: Told,
    start: float,
    until: float,
    answer_s: Callable[[float], float] = lambda now: 0.0,
    holding: Callable[[float], bool] = lambda now: False,
    late_s: Callable[[], float] = lambda: 0.0,
) -> list[float]:
    """When the node's heartbeats were sent, its loop run on a simulated clock: each answer
    takes answer_s(sent) and paces the node at 20 s; each sleep ends late_s() late (a busy loop)."""
    now, sent = start, []
    while now < until:
        now += clock.sleep_s(now) + late_s()
        if clock.due(now, holding(now)):
            sent.append(now)
            now += answer_s(now)
            told.idle_heartbeat_s = 20.0
    return sent


def test_slow_answers_and_a_late_loop_do_not_move_a_nodes_beats() -> None:
    told = Told()
    clock = HeartbeatClock(told, 0.0, random.Random(1))
    # Answers take up to 3 s and the loop wakes up to 40 ms late, at random: beats counted from
    # the answer, or from when the loop woke, would drift by that much each time.
    slow = random.Random(2)
    sent = beats(
        clock,
        told,
        0.0,
        300.0,
        answer_s=lambda now: slow.uniform(0.0, 3.0),
        late_s=lambda: slow.uniform(0.0, 0.04),
    )
    phase = [t % 20.0 for t in sent[2:]]  # past the first beat and the one after the paced answer
    assert len(phase) > 10 and max(phase) - min(phase) < 0.05, sent


def test_nodes_that_registered_together_spread_over_the_idle_interval() -> None:
    # 2,000 nodes register in the same second (a coordinator's restart); once paced at 20 s, they
    # beat about 100 a second, never a crowd in one second.
    rng = random.Random(3)
    per_second: Counter[int] = Counter()
    for _ in range(2_000):
        told = Told()
        start = rng.uniform(0.0, 1.0)
        for t in beats(HeartbeatClock(told, start, rng), told, start, 200.0):
            per_second[int(t)] += 1
    steady = [per_second[s] for s in range(40, 200)]
    assert sum(steady) / len(steady) > 90
    assert max(steady) < 200, max(steady)  # bunched in the Register interval's 5 s: 400 a second


def test_a_node_holding_leases_beats_within_the_register_interval() -> None:
    told = Told()
    clock = HeartbeatClock(told, 0.0, random.Random(4))
    sent = beats(clock, told, 0.0, 120.0, holding=lambda now: 33.0 <= now < 80.0)  # a lease from 33 s to 80 s
    while_held = [t for t in sent if 33.0 <= t < 80.0]
    assert while_held[0] - 33.0 <= 5.0 + 0.05
    assert all(b - a <= 5.0 + 0.05 for a, b in zip(while_held, while_held[1:], strict=False))
    idle_after = [t for t in sent if t >= 80.0]
    assert idle_after and all(b - a > 19.0 for a, b in zip(idle_after, idle_after[1:], strict=False))


def test_an_idle_node_beats_no_later_than_its_interval() -> None:
    told = Told()
    clock = HeartbeatClock(told, 0.0, random.Random(5))
    sent = beats(clock, told, 0.0, 200.0, answer_s=lambda now: 0.2)
    assert sent[0] <= 5.0 + 0.05  # within the Register interval of registering
    assert all(b - a <= 20.0 + 0.05 for a, b in zip(sent, sent[1:], strict=False))
