"""Heartbeat pacing: idle nodes beat less often as more connect, within bounds; nodes holding
leases always beat at the Register interval, and the node daemon keeps to what it is told."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.config import CoordinatorConfig
from coordinator.services import pacing
from coordinator.services.pacing import HeartbeatPacing
from tensorgrid.crypto import Signer
from tensorgrid.heartbeats import HeartbeatClock
from tensorgrid.nodeclient import NodeClient


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
