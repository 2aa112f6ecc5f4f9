"""Heartbeat pacing: how often a node holding no lease should heartbeat, given how many are connected.

A node holding leases beats every heartbeat_interval_ms (the Register interval): its leases live
ttl_ms past its last beat. A node holding none only says it is alive (and hears of nothing to
revoke), so its interval grows with the fleet to keep idle heartbeats near a budget per second:
at 5,000 nodes every 5 s, heartbeats were 1,000 calls a second, most of an idle coordinator's
event loop (benchmarks.fleet). The interval is bounded so an idle node is still seen within a
candidate checker's window (repositories.verification.assign.ACTIVE_MS) three times over.

The budget is the whole grid's, not one replica's. Each replica counts the nodes that beat at it,
and follows (`follow`) how many the database has seen alive at any replica (nodes.last_seen_ms,
written by every heartbeat, registration and result) at most every FLEET_EVERY_S; it paces on the
larger of the two. Counted per replica, two replicas with half the fleet each told their nodes half
the interval: 565 heartbeats a second in all against 250 with one replica at 5,000 nodes. The count
is of node addresses, so a node opening many sessions counts once, and a replica's own count is a
floor no other replica's view lowers; whatever anyone sends, the interval stays within
[base_ms, max_ms], as it did when each replica counted alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("tensorgrid.coordinator")
PRUNE_EVERY_S = 10.0
FLEET_EVERY_S = 5.0  # how often the grid-wide count is read (one COUNT over nodes)


class HeartbeatPacing:
    def __init__(self, base_ms: int, idle_per_s: float, max_ms: int) -> None:
        """base_ms: the Register interval; idle_per_s: idle heartbeats a second the grid aims at
        (every replica together); max_ms: the longest idle interval (never below base_ms)."""
        self.base_ms = base_ms
        self.idle_per_s = idle_per_s
        self.max_ms = max(base_ms, max_ms)
        self.fleet = 0  # nodes alive at any replica, as the database last said (follow)
        self._seen: dict[str, float] = {}  # node → when it last beat here (monotonic)
        self._pruned = time.monotonic()

    def beat(self, node: str, holding: bool) -> int:
        """Record a heartbeat; the interval to tell the node (ms): base while it holds leases
        (or drains), else the fleet-scaled idle interval."""
        now = time.monotonic()
        self._seen[node] = now
        if now - self._pruned > PRUNE_EVERY_S:
            self._prune(now)
        return self.base_ms if holding else self.idle_interval_ms()

    def idle_interval_ms(self) -> int:
        """connected / idle_per_s seconds, within [base_ms, max_ms]."""
        if self.idle_per_s <= 0:
            return self.base_ms
        return int(min(self.max_ms, max(self.base_ms, 1000 * self.connected / self.idle_per_s)))

    @property
    def connected(self) -> int:
        """Nodes connected to the grid: those that beat here within the last two longest
        intervals, or, if more, those the database last saw alive at any replica."""
        return max(len(self._seen), self.fleet)

    @property
    def horizon_ms(self) -> int:
        """A node not seen for this long no longer counts (two longest intervals)."""
        return 2 * self.max_ms

    async def follow(self, count: Callable[[int], Awaitable[int]], every_s: float = FLEET_EVERY_S) -> None:
        """Every every_s, set `fleet` to count(horizon_ms): the nodes seen alive at any replica
        within that long (NodeRepository.count_alive), until cancelled."""
        while True:
            try:
                self.fleet = await count(self.horizon_ms)
            except Exception:  # a DB hiccup must not end the loop; the last count stands
                log.exception("counting the grid's live nodes failed")
            await asyncio.sleep(every_s)

    def _prune(self, now: float) -> None:
        self._pruned = now
        horizon = now - self.horizon_ms / 1000
        self._seen = {n: t for n, t in self._seen.items() if t >= horizon}
