"""A node cannot predict where a check's rerun sits among the requests it rides with
(services/serving/riders.py): a node that told a rerun from a fresh request could answer checks
honestly and the rest as it likes. On main the place came from a Mersenne Twister, whose state
follows from its outputs (the places a node colluding with a client sees its requests take): a
copy of that state, or a seed, predicted every later place."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

from coordinator.services.serving import riders
from tensorgrid.v1 import serving_pb2

RIDERS, MESSAGES = 4, 64  # 5 places a message: a chance match of every place is 5**-64


def _places(draw: Any = None) -> list[int]:
    """Where the fresh request went in each of MESSAGES messages (riders.with_riders), or where
    `draw` (a generator a node might hold) says it goes."""
    places = []
    for _ in range(MESSAGES):
        if draw is not None:
            places.append(draw.randrange(RIDERS + 1))
            continue
        held = [serving_pb2.ServeRequest(request_id=i) for i in range(1, RIDERS + 1)]
        replica: Any = SimpleNamespace(riders=held, rider_timer=None, calls={i: None for i in range(1, RIDERS + 1)})
        message = riders.with_riders(replica, serving_pb2.ServeRequest(request_id=99))
        places.append([r.request_id for r in message].index(99))
    return places


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
