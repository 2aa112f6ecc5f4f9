"""A confirmed review of a training task pays its claimants by the inner steps its run did before
it failed, not only those of the parts before the failing one (issue 11), on SQLite and PostgreSQL:
a part whose program raises says how far it got (its error answer's "step"); a measured part killed
for its memory left it in a progress file (Measured.progress). Both are the referee's child's word,
in which the submitter's program runs: the coordinator bounds them by what it knows itself
(review_parts.steps_done): at least the steps the parts before reached, at most the task's steps
(or where a measured part was asked to stop). Before, a task that fit one part paid nothing, and a
memory review paid only for the parts before the one that passed the limit.

The parts are scripted here (their child's answers given); the real children:
tests/unit/training/test_steps_done.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.db import schema
from coordinator.repositories.store import Store
from coordinator.services.sandboxed import Part
from coordinator.services.verification.review_parts import steps_done
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox import SandboxFailure
from tensorgrid.sandbox.measured import Measured
from tests.unit.coordinator import test_memory_claims_training as memory
from tests.unit.coordinator import test_review_parts as parts
from tests.unit.coordinator.test_claim_pay import work
from tests.unit.coordinator.test_claims import TASK
from tests.unit.coordinator.test_memory_claims import MiB
from tests.unit.coordinator.test_review_parts import Clock, turn

state, blobs, clock = parts.state, parts.blobs, parts.clock  # the fixtures: a store on each database
STEPS = 10


class Raises:
    """A training task of STEPS inner steps whose program raises at inner step `at`, its child
    saying `said` steps were done (what a hostile program might make it say); each part runs
    `per_part` steps (the whole task: it fits one referee request)."""

    def __init__(self, at: int, said: object, per_part: int = STEPS) -> None:
        self.at, self.said, self.per_part = at, said, per_part

    def __call__(self, model: str, settings: dict[str, Any], source: Path, state: Path | None, out: Path) -> Part:
        start = int(state.read_text()) if state is not None else 0
        end = min(STEPS, start + self.per_part)
        if start <= self.at < end:
            details = {} if self.said is None else {"step": self.said}
            raise SandboxFailure("error", f"ExecutionError: training diverged: loss is nan at step {self.at}", details)
        out.write_text(str(end))
        return Part(step=end, steps=STEPS, done=end == STEPS)


def reviewed(state: Store, blobs: BlobStore, run: Raises) -> set[tuple[int, int]]:
    """Two claims on the task; the referee's review in parts run to its verdict: what it paid by."""
    parts.stored_job(state, blobs)
    with state.engine.begin() as conn:
        conn.execute(schema.tasks.update().values(settings=json.dumps({"inner": {"steps": STEPS}})))
    r = parts.reviews(state, blobs, run)  # type: ignore[arg-type]
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    return {(done, total) for done, total, _ in work(state)}


def test_a_task_that_fits_one_part_and_raises_at_step_k_pays_by_k(state: Store, blobs: BlobStore) -> None:
    """On main: (0, 10), a task that fits one part paid its claimants nothing."""
    assert reviewed(state, blobs, Raises(at=9, said=9)) == {(9, STEPS)}


def test_a_later_part_that_raises_pays_by_the_step_it_raised_at(state: Store, blobs: BlobStore) -> None:
    """Parts of 3 steps: the third (steps 6-8) raises at step 7. On main: 6, the parts before's."""
    assert reviewed(state, blobs, Raises(at=7, said=7, per_part=3)) == {(7, STEPS)}


@pytest.mark.parametrize(
    ("said", "paid"),
    [(10**9, STEPS), (-5, 6), (2, 6), ("8", 6), (True, 6), (7.5, 6), (None, 6)],
    ids=["above-the-task", "negative", "below-the-parts-before", "text", "bool", "float", "nothing"],
)
def test_a_forged_step_is_bounded_by_what_the_coordinator_knows(
    state: Store, blobs: BlobStore, said: object, paid: int
) -> None:
    """The submitter's program runs in the child that counts: a count above the task's steps pays
    for every step (of the submitter's own escrow, no more than the task's reward), one below the
    steps the parts before reached, or not a count, pays for those (as on main), never less."""
    assert reviewed(state, blobs, Raises(at=7, said=said, per_part=3)) == {(paid, STEPS)}


class Grows(memory.Parts):
    """memory.Parts whose killed part's child wrote `progress` (None: the true steps it did before
    it passed the limit: the first step whose peak is over it)."""

    def __init__(self, steps: int, grows_at: int, progress: int | None = None) -> None:
        super().__init__(steps, lambda s: 200 * MiB if s < grows_at else 900 * MiB)
        self.grows_at, self.progress = grows_at, progress

    def __call__(self, *args: Any) -> Measured:
        m = super().__call__(*args)
        if not m.stopped:
            return m
        done = self.grows_at if self.progress is None else self.progress
        return Measured(m.peak_bytes, True, m.wall_s, None, crossed_s=0.5, progress=done)


@pytest.mark.parametrize(
    ("grows_at", "progress", "paid"),
    [(3, None, 3), (0, None, 0), (5, None, 5), (3, 999, 4), (3, 0, 2)],
    ids=["honest", "first-step", "end-of-a-part", "forged-up", "forged-down"],
)
def test_a_memory_review_pays_by_the_steps_done_before_the_limit(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, grows_at: int, progress: int | None, paid: int
) -> None:
    """Parts of 1, 1, 2, 4 steps: a program past its limit at step 3 is killed in the third part
    (steps 2-3) after 3 steps; on main it paid for 2, the parts before's. A forged count is cut to
    where the part was asked to stop (4) or raised to where the parts before reached (2)."""
    run = Grows(10, grows_at, progress)
    v = memory.grid(state, blobs, tmp_path, run)
    memory.claimed_and_reviewed(state, v, clock)
    assert state.tasks.get_task(TASK).state == "failed"
    assert {(done, total) for done, total, _ in work(state)} == {(paid, 10)}
    [ended] = memory.events(state, "ended")
    assert f"after inner step {paid}" in ended, ended


@pytest.mark.parametrize(
    ("said", "before", "most", "done"),
    [(3, 2, 4, 3), (9, 2, 4, 4), (1, 2, 4, 2), (None, 2, 4, 2), (True, 0, 4, 0), ("3", 0, 4, 0)],
)
def test_steps_done_is_the_count_between_what_the_coordinator_knows(
    said: object, before: int, most: int, done: int
) -> None:
    assert steps_done(said, before, most) == done
