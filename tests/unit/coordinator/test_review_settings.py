"""The review settings (--review-budget-factor, --review-stalls, --undecided-quorum: config.ReviewSettings)
reach what uses them, on SQLite and PostgreSQL: the referee's review budget and its stalls
(services/verification/reviews.py), and the claims that confirm after an undecided review
(repositories.claims), from the coordinator's configuration down (app.Coordinator). Their flags,
variables and bounds: tests/unit/tensorgrid/test_config.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig, ReviewSettings
from coordinator.repositories.store import Store
from coordinator.services.verification.reviews import Reviews
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox import SandboxFailure
from tensorgrid.types import JobState
from tests.unit.coordinator import test_review_parts as parts
from tests.unit.coordinator.test_claim_reviews import A, B, C, _Runtime, rejections
from tests.unit.coordinator.test_claims import claim
from tests.unit.coordinator.test_review_parts import Clock, Steps, stored_job, turn
from tests.unit.coordinator.test_storage import JOB
from tests.unit.coordinator.test_undecided_reviews import LATER

state, blobs, clock = parts.state, parts.blobs, parts.clock  # the fixtures: a store on each database


def reviews_with(
    state: Store, blobs: BlobStore, steps: Steps, settings: ReviewSettings, rt: _Runtime | None = None
) -> Reviews:
    r = Reviews(rt or _Runtime(), state, blobs, lambda *a: None, settings)  # type: ignore[arg-type]
    r.add_parts(parts.KIND, steps, "it ran")
    return r


def undecided_events(state: Store) -> list[str]:
    return [e.message for e in state.jobs.events_after(JOB, 0) if e.kind == "undecided"]


def test_one_stall_is_undecided_when_the_setting_says_one(state: Store, blobs: BlobStore) -> None:
    stored_job(state, blobs)
    timeout = SandboxFailure("timeout", "over the referee's time limit")
    r = reviews_with(state, blobs, Steps(fail={1: timeout}), ReviewSettings(stalls=1))
    turn(r)  # the first (smallest) part times out: one stall
    assert turn(r) == [JOB]  # decided at once, not after a second timeout as by default
    [said] = undecided_events(state)
    assert "1 parts of the smallest size timed out" in said


def test_the_budget_is_the_settings_factor_of_the_tasks_time_limit(
    state: Store, blobs: BlobStore, clock: Clock
) -> None:
    stored_job(state, blobs, time_limit_ms=2000)
    steps = Steps(clock=clock, part_s=3.0)
    r = reviews_with(state, blobs, steps, ReviewSettings(budget_factor=1.5), _Runtime(time_s=1.0))
    assert r.budget_s(state.reviews.contested()[0]) == 3.0  # 1.5 × 2 s (the default, 4: 8 s)
    asyncio.run(r.review_pending(lambda job, done: None))
    assert len(steps.parts) == 1  # the first 3 s part spends it
    [said] = undecided_events(state)
    assert "1 parts took 3s of the referee's 3s" in said


def test_a_quorum_of_one_confirms_at_the_first_further_claim(db_url: str, blobs: BlobStore, clock: Clock) -> None:
    s = Store(db_url, ReviewSettings(quorum=1))
    s.tasks.reviewed = frozenset({parts.KIND})
    try:
        stored_job(s, blobs, max_attempts=1, time_limit_ms=2000)
        r = reviews_with(s, blobs, Steps(clock=clock, part_s=3.0), ReviewSettings(), _Runtime(time_s=1.0))
        asyncio.run(r.review_pending(lambda job, done: None))
        [said] = undecided_events(s)
        assert "1 more claims would confirm them" in said  # the event names the setting's quorum
        assert claim(s, C, LATER) is False  # believed at once: the job's one attempt is spent
        job = s.jobs.get_job(JOB)
        assert job.state == JobState.FAILED and "confirmed by 1 more nodes" in (job.error or "")
        assert [rejections(s, n) for n in (A, B, C)] == [0, 0, 0]
    finally:
        s.close()


def test_the_coordinator_hands_its_review_settings_to_the_store_and_the_referee(db_url: str, tmp_path: Path) -> None:
    settings = ReviewSettings(budget_factor=7.0, stalls=3, quorum=4)
    config = CoordinatorConfig(data_dir=tmp_path / "coord", database_url=db_url, reviews=settings)
    app = Coordinator(config)
    try:
        assert (app.store.tasks.quorum, app.store.reviews.quorum) == (4, 4)
        reviews = app.verification.reviews
        assert (reviews.budget_factor, reviews.stalls) == (7.0, 3)
    finally:
        asyncio.run(app.stop())
