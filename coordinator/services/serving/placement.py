"""Where replicas go and how many an endpoint holds: pure decisions over the router's state.

- `choose_node`: a node with an open Serve stream and a free replica slot, whose device and
  memory fit the endpoint, not barred from it and not failing it lately; nodes without a
  replica of this endpoint first (a node going away then takes one replica, not all), then
  nodes holding it warm from another coordinator replica's stream (ready at once), then the
  least loaded.
- `scale`: between min_replicas and max_replicas, one step at a time: up when the requests
  per ready replica stay above max_batch for SCALE_UP_S (or calls were refused as saturated),
  down after SCALE_DOWN_S of low load.
"""

from __future__ import annotations

from collections.abc import Iterable

from coordinator.services.serving.model import Endpoint, NodeLink

SCALE_UP_S = 2.0
SCALE_DOWN_S = 30.0
FAILED_BACKOFF_S = 30.0  # a node whose replica of an endpoint failed is not asked again that soon
LOW_LOAD = 0.25  # of max_batch per ready replica: below this the endpoint is lightly loaded


def fits(link: NodeLink, ep: Endpoint, now: float) -> bool:
    """Whether `link` may take a replica of `ep` at all."""
    spec = ep.spec
    if link.closed or link.free_slots <= 0 or link.node in ep.barred:
        return False
    if spec.device == "cuda" and link.device_kind != "cuda":
        return False
    if spec.device == "cpu" and link.device_kind != "cpu":
        return False
    if link.memory_bytes < spec.min_memory_bytes:
        return False
    failed = ep.failed_at.get(link.node)
    return failed is None or now - failed >= FAILED_BACKOFF_S


def choose_node(links: Iterable[NodeLink], ep: Endpoint, now: float) -> NodeLink | None:
    """The node the next replica of `ep` goes to, or None when no node fits."""
    holding = {r.node for r in ep.replicas.values()}
    best: tuple[tuple[int, int, int, str], NodeLink] | None = None
    for link in links:
        if not fits(link, ep, now):
            continue
        key = (1 if link.node in holding else 0, 0 if ep.job_id in link.warm else 1, len(link.replicas), link.node)
        if best is None or key < best[0]:
            best = (key, link)
    return None if best is None else best[1]


def load(ep: Endpoint) -> float:
    """Requests in flight or waiting per ready replica (inf with none ready but some waiting)."""
    ready = len(ep.ready())
    pending = ep.in_flight() + ep.waiting
    if ready == 0:
        return float("inf") if pending else 0.0
    return pending / ready


def scale(ep: Endpoint, now: float) -> int:
    """+1 to add a replica, -1 to drain one, 0 to hold; updates the endpoint's load timers."""
    spec = ep.spec
    live = ep.live()
    if live < spec.min_replicas:
        return 1
    if live > spec.max_replicas:
        return -1
    current = load(ep)
    high = current > spec.max_batch or ep.refused_recently
    ep.refused_recently = False
    low = current < spec.max_batch * LOW_LOAD
    ep.high_since = (ep.high_since if ep.high_since is not None else now) if high else None
    ep.low_since = (ep.low_since if ep.low_since is not None else now) if low else None
    if high and now - ep.high_since >= SCALE_UP_S and live < spec.max_replicas and ep.warming() == 0:  # type: ignore[operator]
        ep.high_since = None
        return 1
    if low and now - ep.low_since >= SCALE_DOWN_S and live > spec.min_replicas:  # type: ignore[operator]
        ep.low_since = None
        return -1
    return 0
