"""Heartbeat pacing: idle nodes beat less often as more connect to the whole grid (every replica),
within bounds; nodes holding leases always beat at the Register interval, and the node daemon
keeps to what it is told."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.config import CoordinatorConfig
from coordinator.repositories.store import Store
from coordinator.services import pacing
from coordinator.services.pacing import HeartbeatPacing
from tensorgrid.crypto import Signer
from tensorgrid.heartbeats import HeartbeatClock
from tensorgrid.nodeclient import NodeClient
from tests.unit.coordinator.test_storage import CPU


def test_the_idle_interval_grows_with_connected_nodes_and_is_bounded() -> None:
    p = HeartbeatPacing(base_ms=5_000, idle_per_s=250, max_ms=20_000)
    assert p.beat("0xa", holding=False) == 5_000  # a few nodes: the Register interval
    for i in range(2_000):
        p.beat(f"0x{i:040x}", holding=False)
    assert p.connected == 2_001 and p.idle_interval_ms() == 8_004  # 2,001 nodes / 250 a second
    for i in range(2_000, 10_000):
        p.beat(f"0x{i:040x}", holding=False)
    assert p.idle_interval_ms() == 20_000  # never past max_ms, however many connect
    assert p.beat("0xa", holding=True) == 5_000  # a node holding leases: always the Register interval


def test_nodes_that_stopped_beating_stop_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(pacing.time, "monotonic", lambda: clock[0])
    p = HeartbeatPacing(base_ms=5_000, idle_per_s=1, max_ms=20_000)
    for i in range(10):
        p.beat(f"0x{i:040x}", holding=False)
    assert p.idle_interval_ms() == 10_000
    clock[0] += 2 * 20 + pacing.PRUNE_EVERY_S + 1  # past two longest intervals: gone
    assert p.beat("0xlast", holding=False) == 5_000 and p.connected == 1


def test_no_budget_means_the_register_interval_for_everyone() -> None:
    p = HeartbeatPacing(base_ms=2_000, idle_per_s=0, max_ms=20_000)
    for i in range(5_000):
        p.beat(f"0x{i:040x}", holding=False)
    assert p.idle_interval_ms() == 2_000


def test_a_node_beats_at_the_register_interval_while_holding_leases_else_at_the_idle_one() -> None:
    async def due() -> list[bool]:
        c = NodeClient("127.0.0.1:1", Signer.generate())
        c.heartbeat_s, c.idle_heartbeat_s = 5.0, 20.0  # as after Register, then a paced heartbeat answer
        clock = HeartbeatClock(c, 0.0)
        clock.fraction, clock.phased_in = 1.0, 20.0  # its last beat at 0 s, on the paced interval
        out = [
            clock.due(5.0, holding=False),
            clock.due(15.0, holding=False),
            clock.due(20.0, holding=False),  # beats (its phase: 20 s)
            clock.due(25.0, holding=True),  # holding a lease: beats 5 s after the last
            clock.due(35.0, holding=True),  # a lease taken mid idle wait: beaten for at the next check
        ]
        await c.close()
        return out

    assert asyncio.run(due()) == [False, False, True, True, True]


def test_the_lease_ttl_stays_well_above_every_interval_a_holding_node_is_given() -> None:
    config = CoordinatorConfig()
    p = HeartbeatPacing(config.heartbeat_interval_ms, config.idle_heartbeats_per_s, config.idle_heartbeat_max_ms)
    for i in range(100_000):
        p.beat(f"0x{i:040x}", holding=False)
    assert p.beat("0xholder", holding=True) * 3 <= config.timing.ttl_ms


def _follow_once(p: HeartbeatPacing, store: Store, now_ms: int) -> None:
    """One turn of p.follow over `store`, as a replica's loop makes it."""

    async def once() -> None:
        async def count(horizon_ms: int) -> int:
            counted.set()
            return store.nodes.count_alive(now_ms - horizon_ms)

        counted = asyncio.Event()
        loop = asyncio.create_task(p.follow(count, every_s=3600))
        await counted.wait()
        await asyncio.sleep(0)  # the count's answer is stored
        loop.cancel()

    asyncio.run(once())


def test_two_replicas_pace_their_nodes_on_the_whole_grid(db_url: str) -> None:
    """Ten idle nodes beat at each of two replicas on one database: each replica tells its own
    nodes the interval of twenty, so the grid's idle heartbeats keep to one budget."""
    store, now = Store(db_url), 1_000_000
    try:
        replicas = [HeartbeatPacing(base_ms=5_000, idle_per_s=1, max_ms=60_000) for _ in range(2)]
        for i in range(20):
            node = f"0x{i:040x}"
            store.nodes.register_node(node, CPU, f"{i:064x}", now, 10**9, f"nonce-{i}")
            assert replicas[i % 2].beat(node, holding=False) == 5_000 + 1_000 * max(0, i // 2 + 1 - 5)
        assert [r.idle_interval_ms() for r in replicas] == [10_000, 10_000]  # each alone: its own ten
        for r in replicas:
            _follow_once(r, store, now + 1_000)
        assert [r.connected for r in replicas] == [20, 20]
        assert [r.beat(f"0x{i:040x}", holding=False) for i, r in enumerate(replicas)] == [20_000, 20_000]
        # a node long silent stops counting at every replica (two longest intervals)
        _follow_once(replicas[0], store, now + 2 * 60_000 + 1)
        assert replicas[0].fleet == 0 and replicas[0].connected == 10  # its own beats are the floor
    finally:
        store.close()


def test_one_node_opening_many_sessions_counts_once_and_no_count_leaves_the_bounds(db_url: str) -> None:
    store, now = Store(db_url), 1_000_000
    try:
        for i in range(30):  # one key registering again and again (as from many replicas)
            store.nodes.register_node("0x" + "a" * 40, CPU, f"{i:064x}", now + i, 10**9, f"nonce-{i}", 64)
        p = HeartbeatPacing(base_ms=5_000, idle_per_s=1, max_ms=60_000)
        _follow_once(p, store, now + 100)
        assert p.fleet == 1 and p.idle_interval_ms() == 5_000
        p.fleet = 10**9  # however many keys a stranger makes: never past max_ms
        assert p.beat("0xb", holding=False) == 60_000 and p.beat("0xb", holding=True) == 5_000
    finally:
        store.close()
