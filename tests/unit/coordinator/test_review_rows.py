"""Reviews of row tasks in parts (services/verification/reviews.py, review_parts.RowPart), on
SQLite and PostgreSQL: a contested task of a kind whose rows are independent (inference,
generation) runs whole in one referee request when its time limit fits in a part, else in parts
of whole batches, sized by the task's time limit first and then by the pace of the parts before,
a quarter as large after a part that timed out; every row runs once, in order; the review goes on
after a restart from the row it reached; a part that raises confirms the claims; a review that
has spent its budget, or whose one-batch parts time out twice in a row, is undecided.

The referee's runs are in process here, each taking a clock's time by its rows (the real
referee's child: tests/security/test_inference_reviews.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from coordinator.db import schema
from coordinator.repositories.store import Store
from coordinator.services.verification.review_parts import Cost, ReviewParts
from coordinator.services.verification.reviews import Reviews
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox import SandboxFailure
from tensorgrid.types import JobState
from tensorgrid.workloads.tensorfile import save_tensors
from tests.unit.coordinator import test_review_parts as parts
from tests.unit.coordinator import test_storage as storage
from tests.unit.coordinator.test_claim_reviews import A, B, _Runtime, contested, rejections
from tests.unit.coordinator.test_claims import TASK
from tests.unit.coordinator.test_review_parts import Clock, turn
from tests.unit.coordinator.test_storage import JOB

state, blobs, clock = parts.state, parts.blobs, parts.clock  # the fixtures: a store on each database

ROWS, BATCH = 96, 4
REQUEST_S = 10.0  # the referee's time limit a request: a part aims at half of it


class Rows:
    """The referee's run of a task's rows: each row takes `row_s` of the clock; a run longer than
    a request times out; a run that holds row `fail_at` raises."""

    def __init__(self, clock: Clock, row_s: float = 0.1, fail_at: int = -1) -> None:
        self.clock, self.row_s, self.fail_at = clock, row_s, fail_at
        self.runs: list[list[int]] = []  # the rows of each run that ended cleanly

    def __call__(self, model_sha: str, settings: dict[str, Any], source: Path, out: Path) -> None:
        assert settings == {"batch_size": BATCH}  # the task's settings as leased
        rows = [int(r) for r in load_file(str(source))["x"][:, 0].tolist()]
        took = len(rows) * self.row_s
        self.clock.now += min(took, REQUEST_S)
        if took > REQUEST_S:
            raise SandboxFailure("timeout", f"the sandboxed run exceeded its time limit of {REQUEST_S:.0f}s")
        if self.fail_at in rows:
            raise SandboxFailure("error", f"ValueError: row {self.fail_at} is malformed")
        out.write_bytes(b"outputs")
        self.runs.append(rows)


def contested_rows(state: Store, blobs: BlobStore, tmp_path: Path, time_limit_ms: int = 60_000) -> None:
    """The job's one task of ROWS rows (row i holds i), two nodes' claims on it."""
    source = tmp_path / "rows.safetensors"
    save_tensors({"x": torch.arange(ROWS, dtype=torch.float32).repeat(3, 1).T.contiguous()}, source)
    model, task_input = blobs.put_bytes(b"a program"), blobs.put_file(source)
    storage.make_job(
        state, 1, max_attempts=2, model=model, task_input=task_input, settings_json=json.dumps({"batch_size": BATCH})
    )
    with state.engine.begin() as conn:
        conn.execute(schema.tasks.update().values(time_limit_ms=time_limit_ms))
    contested(state)


def reviews(state: Store, blobs: BlobStore, run: Rows) -> Reviews:
    """A coordinator's review service (a new one stands for a restarted coordinator)."""
    return Reviews(_Runtime(time_s=REQUEST_S), state, blobs, run)  # type: ignore[arg-type]


def waiting(state: Store) -> bool:
    """The task still waits for its review, and nobody has been believed or blamed for it."""
    return (
        state.tasks.get_task(TASK).state == "contested"
        and rejections(state, A) == rejections(state, B) == 1
        and state.jobs.get_job(JOB).state != JobState.FAILED
    )


def verdict(state: Store) -> str:
    """What the review's verdict said (an event of the job's)."""
    events = state.jobs.events_after(JOB, 0)
    verdicts = ("claims disproved", "claims confirmed", "claims undecided")
    [said] = [e.message for e in events if any(v in e.message for v in verdicts)]
    return said


def test_a_task_longer_than_a_request_runs_in_parts_of_whole_batches_each_row_once(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    contested_rows(state, blobs, tmp_path)  # 9.6 s of rows: whole, it would just fit; its limit says 60 s
    run = Rows(clock)
    r = reviews(state, blobs, run)
    while state.tasks.get_task(TASK).state == "contested":
        assert turn(r) in ([], [JOB])
    sizes = [len(rows) for rows in run.runs]
    # the first sized by the task's limit (5 s of 60 s: 8 rows), then by the pace (at most 4× the last)
    assert sizes == [8, 32, 48, 8], sizes
    assert [row for rows in run.runs for row in rows] == list(range(ROWS))  # every row once, in order
    assert state.tasks.get_task(TASK).state == "pending" and "ran over the whole input (4 parts)" in verdict(state)
    assert not any((blobs.root / "reviews").iterdir())


def test_a_task_whose_limit_fits_runs_whole_and_after_a_timeout_in_quarters(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    contested_rows(state, blobs, tmp_path, time_limit_ms=5_000)  # fits in a part: the whole input first
    run = Rows(clock, row_s=0.2)  # but the referee is slower than the nodes: 19.2 s
    r = reviews(state, blobs, run)
    r.budget_factor = 10.0  # room for the timeout and four parts
    assert turn(r) == [] and waiting(state) and run.runs == []  # the whole timed out: charged
    assert r.progress.cost(TASK) == Cost(REQUEST_S, 1, 0, 0, 0)
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    assert [len(rows) for rows in run.runs] == [24, 24, 24, 24]  # a quarter, then as many as 5 s holds
    assert [row for rows in run.runs for row in rows] == list(range(ROWS))
    assert state.tasks.get_task(TASK).state == "pending"


def test_a_part_over_the_limit_is_tried_again_a_quarter_as_large(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    contested_rows(state, blobs, tmp_path)
    r = reviews(state, blobs, Rows(clock, row_s=0.2))
    r.progress.charge(TASK, Cost(1.0, 1, 8, ROWS, 60))  # the part before sized the next too large: 12 s
    assert turn(r) == [] and waiting(state)
    assert r.progress.cost(TASK) == Cost(1.0 + REQUEST_S, 2, 8, ROWS, 12)  # the same rows next, a quarter
    turn(r)
    assert r.progress.cost(TASK).step == 20


def test_a_restart_mid_review_goes_on_from_the_row_it_reached(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    contested_rows(state, blobs, tmp_path)
    before = Rows(clock)
    turn(reviews(state, blobs, before))
    turn(reviews(state, blobs, before))
    assert [len(rows) for rows in before.runs] == [8, 32] and waiting(state)
    after = Rows(clock)  # the coordinator restarted: a new service, the same blob directory
    r = reviews(state, blobs, after)
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    assert after.runs[0][0] == 40 and [row for rows in before.runs + after.runs for row in rows] == list(range(ROWS))


def test_a_part_that_raises_confirms_the_claims(state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path) -> None:
    contested_rows(state, blobs, tmp_path)
    r = reviews(state, blobs, Rows(clock, fail_at=50))
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    assert "claims confirmed" in verdict(state) and "row 50 is malformed" in verdict(state)
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "row 50 is malformed" in job.error  # both claimants believed
    assert not any((blobs.root / "reviews").iterdir())


def test_a_review_that_spends_its_budget_is_undecided_with_the_row_it_reached(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    contested_rows(state, blobs, tmp_path, time_limit_ms=5_000)  # a budget of max(10 s, 4 × 5 s): 20 s
    r = reviews(state, blobs, Rows(clock, row_s=20.0))  # one batch is longer than a request
    turns = 0
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
        turns += 1
    assert turns == 3  # the whole, then a quarter: both timed out and spent the budget
    assert "over its review budget: 2 parts took 20s of the referee's 20s and reached row 0 of 96" in verdict(state)
    assert state.jobs.get_job(JOB).state == JobState.RUNNING  # undecided: nothing spent, nobody believed
    assert rejections(state, A) == rejections(state, B) == 1


def test_a_single_batch_longer_than_a_request_is_undecided_before_the_budget(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    contested_rows(state, blobs, tmp_path)  # a budget of 240 s
    r = reviews(state, blobs, Rows(clock, row_s=3.0))  # a batch of 4 rows: 12 s, past a request
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    assert r.progress.cost(TASK) == Cost()  # dropped with the review
    said = verdict(state)
    assert "one batch is longer than a referee request: 2 parts of the smallest size timed out at row 0" in said
    assert state.jobs.get_job(JOB).state == JobState.RUNNING


def test_a_cost_written_before_row_parts_reads_as_no_size(tmp_path: Path) -> None:
    parts = ReviewParts(tmp_path)
    (tmp_path / f"{TASK}.json").write_text(json.dumps({"spent_s": 3.0, "parts": 2, "step": 4, "steps": 9}))
    assert parts.cost(TASK) == Cost(3.0, 2, 4, 9, 0)
