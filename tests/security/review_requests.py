"""The referee's requests of one review, one at a time, timed (the abuse tests of reviews in parts)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.services.runtime import REFEREE_START_S
from coordinator.services.verification.review_parts import Cost
from coordinator.services.verification.reviews import Reviews


@dataclass(frozen=True)
class Request:
    wait_s: float  # how long the request took, bookkeeping included
    warm: bool  # its child was warm (not a new one after a part that timed out)
    after: Cost  # where the review stood after it


def review_requests(reviews: Reviews, task_id: str, between: Callable[[], None]) -> list[Request]:
    """Each request the referee makes for the task's review until it is settled (the last: the
    empty look after the verdict); `between` runs after each request that left work to do."""
    done: list[Request] = []

    async def review() -> None:
        warm = True
        while True:
            before = reviews.progress.cost(task_id)
            started = time.monotonic()
            more = await reviews.review_next(lambda job, complete: None)
            after = reviews.progress.cost(task_id)
            done.append(Request(time.monotonic() - started, warm, after))
            warm = not (more and after.parts > before.parts and after.step == before.step)  # timed out: a new child
            if not more:
                return
            between()

    asyncio.run(review())
    return done


def each_within(requests: list[Request], limit_s: float) -> bool:
    """Every request ended within limit_s, and one after a part that timed out within limit_s
    plus a new child's start (the next request, whoever makes it, waits for that too)."""
    return all(r.wait_s < limit_s + (0 if r.warm else REFEREE_START_S) for r in requests)
