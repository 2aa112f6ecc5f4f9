"""A check's rerun held to ride down with a replica's next request (links.py: Links.send).

A check's rerun sent alone wakes the checking node, its worker and the coordinator's
stream once more, on cores the request in flight needs (at 1 client it was most of the
slowest 1% of requests: docs/SERVING.md). Riding with a request, it is one more row of a
micro-batch that runs anyway. Its node sees an ordinary message of several requests, the
rerun at a random place among them; none comes within RIDE_WAIT_S: the riders go alone.

The place is drawn from the operating system's generator (secrets.SystemRandom), not a seeded
Mersenne Twister: a node that told a rerun from a fresh request could answer checks honestly and
the rest as it likes, and a Twister's state follows from its outputs (the places a node colluding
with a client sees its own requests take, a few bits each), so its later places would too.
Nor do the ids or deadlines tell: a link issues ids as requests are sent (links.send), a rerun's
when it is held, so the fresh request's would be the highest in its message, and its deadline the
latest (made last, by as much as it was held). The message's ids go to its requests in place
order instead (their calls re-keyed: nothing holds a rider's id but its call, the replica's and the
link's `calls`, and checks' rerun waits, which follow the call), and each request names the
message's latest deadline (the node drops none earlier than its own; the coordinator still ends
each call at its own, links._expire).
"""

from __future__ import annotations

import asyncio
import secrets

from coordinator.services.serving.model import Call, Replica
from tensorgrid.v1 import serving_pb2

RIDE_WAIT_S = 0.05  # a check's rerun waits at most this long for a request to ride down with
_RANDOM = secrets.SystemRandom()  # where a rerun sits among the requests it rides with (module doc)


def down(replica: Replica, msg: serving_pb2.ServeDown) -> None:
    """Requests go down the replica's data link while it is up, else its node's Serve stream."""
    if replica.data is not None:
        replica.data.send(msg)
    else:
        replica.link.send(msg)


def hold(replica: Replica, request: serving_pb2.ServeRequest, loop: asyncio.AbstractEventLoop) -> None:
    """Keep a rerun for the replica's next request; RIDE_WAIT_S at the latest, it goes alone."""
    replica.riders.append(request)
    if replica.rider_timer is None:
        replica.rider_timer = loop.call_later(RIDE_WAIT_S, send_riders, replica)


def with_riders(replica: Replica, request: serving_pb2.ServeRequest) -> list[serving_pb2.ServeRequest]:
    """The request and the replica's held reruns, in one message's order (no place marks a rerun)."""
    if not replica.riders:
        return [request]
    requests = take_riders(replica)
    requests.insert(_RANDOM.randrange(len(requests) + 1), request)
    _alike(replica, requests)
    return requests


def _alike(replica: Replica, requests: list[serving_pb2.ServeRequest]) -> None:
    """Give the message's requests its ids in ascending place order, their calls re-keyed to them
    (a permutation of the ids they hold: every request of it is a call of the replica's), and one
    deadline: the latest, or none where one has none (0)."""
    calls = [replica.calls[r.request_id] for r in requests]
    deadlines = [r.deadline_ms for r in requests]
    deadline = 0 if 0 in deadlines else max(deadlines)
    for request, call, rid in zip(requests, calls, sorted(r.request_id for r in requests), strict=True):
        request.request_id = call.request_id = rid
        request.deadline_ms = deadline
        replica.calls[rid] = replica.link.calls[rid] = call


def take_riders(replica: Replica) -> list[serving_pb2.ServeRequest]:
    """The replica's held reruns still wanted, in order; none held from now on."""
    if replica.rider_timer is not None:
        replica.rider_timer.cancel()
        replica.rider_timer = None
    riders, replica.riders = replica.riders, []
    return [r for r in riders if r.request_id in replica.calls]


def send_riders(replica: Replica) -> None:
    """No request went to the replica within RIDE_WAIT_S: its held reruns go alone."""
    replica.rider_timer = None
    riders = take_riders(replica)
    if riders:
        down(replica, serving_pb2.ServeDown(requests=riders))


def unhold(call: Call) -> None:
    """A held rerun whose call ends (failed, expired, given up) never goes down."""
    riders = call.replica.riders
    if riders:
        call.replica.riders = [r for r in riders if r.request_id != call.request_id]
