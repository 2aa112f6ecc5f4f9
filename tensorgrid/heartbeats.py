"""When a node heartbeats: on a schedule of its own, at a random phase, however long answers take.

A node holding leases beats every heartbeat_s (the coordinator's Register interval: its leases
live the lease TTL past a beat); one holding none every idle_heartbeat_s (what the coordinator's
last answer said: longer as more nodes connect, coordinator.services.pacing). Each beat is due
an interval after the last one was *due*, not after its answer came back.

Counting from the answer, as the node daemon and benchmarks.fleet's simulated nodes did, moved a
node's beats to whenever the coordinator answered: every node whose answer a busy moment held up
came out of it on one phase, and stayed there, and the next such moment gathered more. Under
`python -m benchmarks.fleet` at 5,000 nodes, 250 heartbeats a second on average came as about
1,000 within one second every six, and leases under way then waited 100-400 ms (their
transactions and the event loop behind heartbeat batches of 200): most of the lease p99.
A node also starts at a random phase, and draws a new one when told a much longer idle interval
(its first paced answer), between the old interval and the new: nodes that registered together
(a coordinator's restart) spread over the whole interval instead of beating together, at the cost
of a beat sooner than the new interval needs (a sixth of an interval each time it grows by half).
"""

from __future__ import annotations

import random
from typing import Protocol

EARLY_S = 0.05  # a beat this close to due is sent (timers fire a little early or late)
# Told an idle interval this much longer than the one its phase was drawn in, a node draws a new
# phase within the new interval: its beats would otherwise stay bunched in the old, shorter one.
REPHASE_GROWTH = 1.5


class Intervals(Protocol):
    """What the coordinator told the node (tensorgrid.nodeclient.NodeClient)."""

    heartbeat_s: float
    idle_heartbeat_s: float


class HeartbeatClock:
    """Tells a node's heartbeat loop how long to sleep and whether to beat on waking:

    clock = HeartbeatClock(client, time.monotonic())
    while True:
        await asyncio.sleep(clock.sleep_s(time.monotonic()))
        if clock.due(time.monotonic(), holding):
            await beat()
    """

    def __init__(self, intervals: Intervals, now: float, rng: random.Random | None = None) -> None:
        self.intervals = intervals
        self.rng = rng if rng is not None else random.Random()
        self.beat_at = now  # when the last beat was due (registering counts as one)
        self.phased_in = intervals.idle_heartbeat_s  # the idle interval the phase was drawn in
        self.fraction = self.rng.random()  # of the idle interval after beat_at: the next idle beat

    def _idle_due(self) -> float:
        idle = self.intervals.idle_heartbeat_s
        if idle > REPHASE_GROWTH * self.phased_in:  # no sooner than the old interval had it
            self.phased_in, self.fraction = idle, self.rng.uniform(self.phased_in / idle, 1.0)
        self.phased_in = min(self.phased_in, idle)  # a shorter one keeps the phase; growing again redraws it
        return self.beat_at + self.fraction * idle

    def sleep_s(self, now: float) -> float:
        """Until the next idle beat, and never longer than heartbeat_s: a lease taken meanwhile
        is beaten for within heartbeat_s."""
        return max(0.0, min(self.intervals.heartbeat_s, self._idle_due() - now))

    def due(self, now: float, holding: bool) -> bool:
        """Whether to beat now; if so, the beat counts as sent when it was due (so the schedule
        keeps its phase), unless the node is a whole interval late (a long stall: it starts over
        from now)."""
        due_at = self._idle_due()
        if holding:  # its leases live the lease TTL past a beat: at least every heartbeat_s
            due_at = min(due_at, self.beat_at + self.intervals.heartbeat_s)
        if now < due_at - EARLY_S:
            return False
        self.beat_at = due_at if now - due_at < self.intervals.heartbeat_s else now
        self.fraction = 1.0
        return True
