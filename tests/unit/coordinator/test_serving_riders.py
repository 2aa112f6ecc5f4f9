"""A node cannot tell where a check's rerun sits among the requests it rides with
(services/serving/riders.py): a node that told a rerun from a fresh request could answer checks
honestly and the rest as it likes. On main the place came from a Mersenne Twister, whose state
follows from its outputs (the places a node colluding with a client sees its requests take): a
copy of that state, or a seed, predicted every later place. And the ids and deadlines told it
anyway: a link issues ids as requests are sent, a rerun's when it is held, so the fresh request's
was the highest in its message, and its deadline the latest."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

from coordinator.services.serving import riders
from tensorgrid.v1 import serving_pb2

RIDERS, MESSAGES = 4, 64  # 5 places a message: a chance match of every place is 5**-64
FRESH = RIDERS + 1  # the fresh request is sent after the riders were held: its id is the highest issued


def _message() -> tuple[Any, list[serving_pb2.ServeRequest]]:
    """A replica holding RIDERS reruns (ids 1…RIDERS) and the message its next request (FRESH) goes
    down in; each call's input names it, to follow it through its re-keying."""
    calls = {i: SimpleNamespace(request_id=i, input=f"call {i}") for i in range(1, FRESH + 1)}
    link = SimpleNamespace(calls=dict(calls))
    held = [serving_pb2.ServeRequest(request_id=i, input=f"call {i}".encode(), deadline_ms=1000 + i) for i in calls]
    held.pop()  # the fresh request's call is not held
    replica: Any = SimpleNamespace(riders=held, rider_timer=None, calls=dict(calls), link=link)
    fresh = serving_pb2.ServeRequest(request_id=FRESH, input=f"call {FRESH}".encode(), deadline_ms=1000 + FRESH)
    return replica, riders.with_riders(replica, fresh)


def _places(draw: Any = None) -> list[int]:
    """Where the fresh request went in each of MESSAGES messages, or where `draw` (a generator a
    node might hold) says it goes."""
    if draw is not None:
        return [draw.randrange(RIDERS + 1) for _ in range(MESSAGES)]
    return [[r.input for r in _message()[1]].index(f"call {FRESH}".encode()) for _ in range(MESSAGES)]


def test_a_node_cannot_predict_where_a_rerun_rides() -> None:
    # the generator has no state to learn (a Twister's outputs give its state away, and a copy of
    # that state predicted every later place on main)
    with pytest.raises(NotImplementedError):
        riders._RANDOM.getstate()
    # nor does seeding it or the random module
    state = random.getstate()
    try:
        random.seed(0)
        riders._RANDOM.seed(0)
        assert _places() != _places(random.Random(0))
    finally:
        random.setstate(state)


def test_the_ids_and_deadlines_of_a_message_tell_no_rerun_and_each_call_keeps_its_request() -> None:
    fresh_ids = set()
    for _ in range(MESSAGES):
        replica, message = _message()
        assert [r.request_id for r in message] == list(range(1, FRESH + 1))  # ascending with place
        assert {r.deadline_ms for r in message} == {1000 + FRESH}  # main: the fresh request's, the latest
        for r in message:  # a reply to an id answers the call whose request went down under it
            assert replica.calls[r.request_id].input.encode() == r.input
            assert replica.link.calls[r.request_id] is replica.calls[r.request_id]
            assert replica.calls[r.request_id].request_id == r.request_id
        fresh_ids.add(next(r.request_id for r in message if r.input == f"call {FRESH}".encode()))
    assert fresh_ids != {FRESH}  # main: always FRESH, the highest
