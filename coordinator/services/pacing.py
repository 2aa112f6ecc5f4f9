"""Heartbeat pacing: how often a node holding no lease should heartbeat, given how many are connected.

A node holding leases beats every heartbeat_interval_ms (the Register interval): its leases live
ttl_ms past its last beat. A node holding none only says it is alive (and hears of nothing to
revoke), so its interval grows with the fleet to keep idle heartbeats near a budget per second:
at 5,000 nodes every 5 s, heartbeats were 1,000 calls a second, most of an idle coordinator's
event loop (benchmarks.fleet). The interval is bounded so an idle node is still seen within a
candidate checker's window (repositories.verification.assign.ACTIVE_MS) three times over.
"""

from __future__ import annotations

import time

PRUNE_EVERY_S = 10.0


class HeartbeatPacing:
    def __init__(self, base_ms: int, idle_per_s: float, max_ms: int) -> None:
        """base_ms: the Register interval; idle_per_s: idle heartbeats a second this process aims
        at; max_ms: the longest idle interval (never below base_ms)."""
        self.base_ms = base_ms
        self.idle_per_s = idle_per_s
        self.max_ms = max(base_ms, max_ms)
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
        """Nodes that beat here within the last two longest intervals."""
        return len(self._seen)

    def _prune(self, now: float) -> None:
        self._pruned = now
        horizon = now - 2 * self.max_ms / 1000
        self._seen = {n: t for n, t in self._seen.items() if t >= horizon}
