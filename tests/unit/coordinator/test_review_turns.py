"""The referee's review turns are shared among submitters (services/verification/turns.py), on
SQLite and PostgreSQL: one submitter's many contested tasks do not crowd out another's one.

The abuse: a submitter sizes every task of many jobs at the edge of its limits, so each task's
claims go to review and take a full budget; with a turn per task, another submitter's one review
had a hundredth of the referee. Tasks are marked contested directly here (how claims make them
so is tested in test_claim_reviews.py); the referee's run is not started: which task a turn goes
to is what is tested."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from coordinator.db import schema as s
from coordinator.repositories.jobs import NewTask
from coordinator.repositories.reviews import Contested
from coordinator.repositories.store import Store
from coordinator.services.verification.review_parts import Cost
from coordinator.services.verification.reviews import Reviews
from coordinator.services.verification.turns import fair_turn
from tensorgrid.blobs import BlobStore
from tensorgrid.spec import task_id_for
from tensorgrid.types import BlobRef
from tests.jobs import new_job
from tests.unit.coordinator.test_claim_reviews import _Runtime

FLOODER, OTHER = "0x" + "f1" * 20, "0x" + "0e" * 20


@pytest.fixture
def state(db_url: str):  # type: ignore[no-untyped-def]
    s = Store(db_url)
    yield s
    s.close()


def contested_job(state: Store, job_id: str, submitter: str, failed_ms: int) -> str:
    """A one-task job of `submitter` whose task waits for review, its claims made at `failed_ms`."""
    state.jobs.create_job(
        new_job(job_id, submitter=submitter), [NewTask(0, task_id_for(job_id, 0), BlobRef("ee" * 32, 0), 1)], now_ms=1
    )
    task_id = task_id_for(job_id, 0)
    with state.engine.begin() as conn:
        conn.execute(
            update(s.tasks).where(s.tasks.c.task_id == task_id).values(state="contested", last_failed_ms=failed_ms)
        )
    return task_id


class _Turns(_Runtime):
    """The referee's requests are recorded, not run: each answers "not yet"."""

    def __init__(self) -> None:
        super().__init__()
        self.turns: list[str] = []

    async def refereed(self, fn: Any, task: Contested) -> None:  # type: ignore[override]
        self.turns.append(task.task_id)


def test_another_submitters_one_review_takes_the_turn_from_a_flooders_many_cheaper_ones(
    state: Store, tmp_path: Path
) -> None:
    """Three reviews of the flooder's under way, 10 s of referee each; the other submitter's one has
    had 20 s. A turn per task went to the flooder's cheapest (10 < 20); by submitter, the other's
    20 s is less than the flooder's 30 s, so it goes to the other submitter."""
    flooded = [contested_job(state, f"{i:02x}" * 32, FLOODER, 10 + i) for i in range(3)]
    mine = contested_job(state, "cd" * 32, OTHER, 5)
    rt = _Turns()
    reviews = Reviews(rt, state, BlobStore(tmp_path / "blobs", 1 << 20), run=lambda *a: None)  # type: ignore[arg-type]
    for task_id in flooded:
        reviews.progress.charge(task_id, Cost(spent_s=10.0, parts=1))
    reviews.progress.charge(mine, Cost(spent_s=20.0, parts=2))
    assert [t.submitter for t in state.reviews.contested()] == [OTHER, FLOODER, FLOODER, FLOODER]

    assert asyncio.run(reviews.review_next(lambda job, done: pytest.fail("settled"))) is True
    assert rt.turns == [mine]

    reviews.progress.charge(mine, Cost(spent_s=31.0, parts=3))  # now past the flooder's 30 s in all
    asyncio.run(reviews.review_next(lambda job, done: pytest.fail("settled")))
    assert rt.turns == [mine, flooded[0]]  # the flooder's cheapest, the oldest among equals


def _task(task_id: str, submitter: str) -> Contested:
    return Contested(task_id, "j" + task_id, "inference", "", "", "{}", 1000, submitter=submitter)


def test_turns_alternate_between_submitters_as_their_reviews_cost() -> None:
    """A hundred reviews of one submitter and one of another, each request costing 1 s: the lone
    review has every other turn, not one in a hundred and one."""
    tasks = [_task(f"f{i:03d}", FLOODER) for i in range(100)] + [_task("lone", OTHER)]
    spent = dict.fromkeys((t.task_id for t in tasks), 0.0)
    turns = []
    for _ in range(20):
        task = fair_turn(tasks, spent.__getitem__)
        spent[task.task_id] += 1.0
        turns.append(task.submitter)
    assert turns.count(OTHER) == 10 and turns[:2] == [FLOODER, OTHER]  # the oldest first among equals


def test_within_one_submitter_the_review_that_cost_least_goes_first() -> None:
    a, b = _task("a", FLOODER), _task("b", FLOODER)
    assert fair_turn([a, b], {"a": 5.0, "b": 1.0}.__getitem__) is b
    assert fair_turn([a, b], {"a": 1.0, "b": 1.0}.__getitem__) is a
