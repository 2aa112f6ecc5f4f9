"""A training job's programs run only in the coordinator's sandboxed child, never in its own
process (which holds its signing key): intake's trial load, the end-of-round evaluation and the
referee's run of a task two nodes claimed cannot be run (a review, under the referee's limits).

A real coordinator (SQLite) with its real warm sandbox; nodes are simulated in-process with
the real worker code, as in tests/unit/coordinator/test_rounds.py. A review runs the task in
parts of one referee request each: a task longer than one is still run whole."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from coordinator.db import schema as s
from coordinator.repositories.training.rounds import round_view
from coordinator.services.sandboxed import referee
from tensorgrid.errors import SpecError
from tensorgrid.spec import TrainingSpec
from tensorgrid.types import ErrorKind, JobState, TaskError
from tensorgrid.workloads.model import export_program
from tests.datasets import save_digits
from tests.security.review_requests import each_within, review_requests
from tests.unit.coordinator.test_rounds import (
    NODES,
    new_manager,
    now_ms,
    round_events,
    run_round,
    submit,
)

# The steady program's spins per row: sized so that the abuse test's task, timed to take two of
# the referee's requests, needs fewer rows than the digits training split holds (1,438: at most
# 179 steps of 8) even on a machine three times faster than this one, quiet (80 spins: 0.38 s a
# step here, 53 steps for 20 s; with 10 spins a quiet clean-clone run asked for 211 steps, which
# the spec refused). Capped below the split's bound: the task is then still several parts long.
STEADY_SPIN = 80
MAX_STEADY_STEPS = 170


class _Net(torch.nn.Module):
    """The digits classifier; `spin` adds parameter-free work (a slow but valid eval program
    with the very weights of the train program). Each spin is a (rows × 4096) @ (4096 × 4096)
    product: 100 of them over the held-out rows are over a teraflop, far past a one-second
    limit on any CPU (60 spins of a 1024-wide product once finished inside it); over a batch of
    8 rows a spin takes a few milliseconds (STEADY_SPIN: 0.38 s a training step, quiet)."""

    def __init__(self, spin: int = 0, hidden: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
        self.spin = spin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.spin:
            wide, mix = x.repeat(1, 64), torch.full((4096, 4096), 1.0 / 4096)
            for _ in range(self.spin):
                wide = torch.tanh(wide @ mix)
            out = out + 0.0 * wide[:, :10]
        return out


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("training-sandbox")
    save_digits(root / "digits.safetensors")
    example = (torch.randn(4, 64),)
    export_program(_Net().train(), example, root / "train.pt2")
    export_program(_Net().eval(), example, root / "eval.pt2")
    export_program(_Net(spin=100).eval(), example, root / "slow-eval.pt2")
    export_program(_Net(spin=100).train(), example, root / "slow-train.pt2")
    export_program(_Net(spin=STEADY_SPIN).train(), example, root / "steady-train.pt2")
    export_program(_Net(hidden=16).eval(), example, root / "misfit-eval.pt2")
    return {"dataset": root / "digits.safetensors", **{p.stem: p for p in root.glob("*.pt2")}}


def _coordinator(tmp_path: Path, **config: Any) -> Iterator[Coordinator]:
    app = Coordinator(
        CoordinatorConfig(data_dir=tmp_path / "coord", database_url=f"sqlite:///{tmp_path / 's.db'}", **config)
    )
    yield app
    asyncio.run(app.runtime.stop())  # its referee's child too (shutdown alone leaves it to the next test)
    app.runtime.shutdown()
    app.store.close()


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    yield from _coordinator(tmp_path)


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[Coordinator]:
    """A coordinator whose referee gives a request one second."""
    yield from _coordinator(tmp_path, referee_time_s=1.0)


@pytest.fixture
def short_requests(tmp_path: Path) -> Iterator[Coordinator]:
    """A coordinator whose referee gives a request ten seconds: room for a fresh child's first
    program load (seconds on this loaded machine) besides the steps."""
    yield from _coordinator(tmp_path, referee_time_s=10.0)


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> Any:
    """arm(): from then on, deserializing a program in this (the coordinator's) process fails
    the test; disarm() for the simulated nodes, whose worker code runs in this process too."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a submitter's program was deserialized in the coordinator's process")

    class Wire:
        def arm(self) -> None:
            monkeypatch.setattr(torch.export, "load", refuse)

        def disarm(self) -> None:
            monkeypatch.undo()

    return Wire()


def _files(programs: dict[str, Path], eval_program: str) -> dict[str, Path]:
    return {"train": programs["train"], "dataset": programs["dataset"], "eval": programs[eval_program]}


def _submit(app: Coordinator, files: dict[str, Path], **kw: Any) -> tuple[str, TrainingSpec]:
    """test_rounds.submit with an eval program (blob "eval")."""
    eval_ref = app.blobs.put_file(files["eval"])
    rest = {k: v for k, v in files.items() if k != "eval"}
    return submit(app, rest, eval_program=eval_ref, rounds=2, **kw)


def test_intake_and_evaluation_never_deserialize_a_program_in_the_coordinator(
    coordinator: Coordinator, programs: dict[str, Path], tripwire: Any, tmp_path: Path
) -> None:
    app = coordinator
    tripwire.arm()
    job_id, spec = _submit(app, _files(programs, "eval"))  # trial load of both programs
    tripwire.disarm()
    run_round(app, tmp_path, spec.workers_per_round)
    tripwire.arm()
    assert asyncio.run(new_manager(app).advance(job_id)) == "closed"  # parameters and evaluation
    tripwire.disarm()
    [event] = round_events(app, job_id)
    assert event["loss"] is not None and 0.0 <= event["accuracy"] <= 1.0, event
    assert "eval_error" not in event


def test_an_eval_program_that_does_not_fit_the_weights_is_refused_at_intake(
    coordinator: Coordinator, programs: dict[str, Path]
) -> None:
    # Refused before the job is stored: nothing scheduled, the escrow untouched.
    with pytest.raises(SpecError, match="cannot be trained.*weight"):
        _submit(coordinator, _files(programs, "misfit-eval"))


def test_an_evaluation_over_the_referee_limit_leaves_the_round_without_metrics_and_the_job_going(
    impatient: Coordinator, programs: dict[str, Path], tmp_path: Path
) -> None:
    app = impatient
    job_id, spec = _submit(app, _files(programs, "slow-eval"))  # intake's load has its own time box

    async def scenario() -> None:
        manager = new_manager(app)
        for r in range(spec.rounds):
            view = round_view(app.store.engine, job_id)
            assert view is not None and view.round == r
            run_round(app, tmp_path, spec.workers_per_round)
            assert await manager.advance(job_id) == ("finished" if r == spec.rounds - 1 else "closed")

    asyncio.run(scenario())
    events = round_events(app, job_id)
    assert len(events) == spec.rounds
    for event in events:
        assert event["loss"] is None and event["accuracy"] is None, event
        assert event["train_loss"] is not None
        assert "held-out evaluation failed (timeout)" in event["eval_error"], event
    job = app.store.jobs.get_job(job_id)
    assert job.state == JobState.SUCCEEDED, job.error


def _steps_for(seconds: float) -> int:
    """Inner steps of the steady program (one thread, as the referee's child) that take about
    `seconds` on this machine at its present load."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = _Net(spin=STEADY_SPIN).train()
        optimizer = torch.optim.AdamW(net.parameters())
        x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
        started = time.monotonic()
        for _ in range(4):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
        step_s = (time.monotonic() - started) / 4
    finally:
        torch.set_num_threads(old)
    return max(8, min(MAX_STEADY_STEPS, math.ceil(seconds / step_s)))


def _contest(app: Coordinator, node_pair: tuple[str, str]) -> str:
    """Both nodes lease the job's one task in turn and lie that its shard is bad; its id."""
    lie = TaskError(ErrorKind.INVALID_INPUT, "the shard is not a tensor file")
    for node in node_pair:
        (lease,), _ = app.store.tasks.lease_tasks(node, 1, now_ms(), app.config.timing)
        app.store.tasks.fail_task(node, lease.task_id, lease.attempt, lie, now_ms())
    assert app.store.tasks.get_task(lease.task_id).state == "contested"
    return lease.task_id


def test_two_colluding_claims_on_a_task_longer_than_a_referee_request_no_longer_fail_it(
    short_requests: Coordinator, programs: dict[str, Path], tripwire: Any
) -> None:
    """Abuse: two nodes lie that a valid training task's shard is bad, on a task whose inner
    steps take the referee's CPU several of its requests (on main the one request timed out and
    the claims were confirmed, failing the job: max_attempts=2). The referee runs it in parts,
    one request each, the state kept between them: every request ends within the referee's
    limit (the wait of anything queued behind it stays bounded), the whole run completes, and the
    claims are disproved: the task is pending with no attempt spent (an honest node then trains a
    disproved task: tests/unit/coordinator/test_training_reviews.py)."""
    app = short_requests
    # A part that makes no progress within a request (a child's first program load at load 9 in
    # a clean-clone run did not) is tried again smaller; two such in a row would make the review
    # undecided, which is the next test's case: here the run must complete, so allow more.
    app.verification.reviews.stalls = 5
    files = {"train": programs["steady-train"], "dataset": programs["dataset"]}
    steps = _steps_for(2 * app.config.referee_time_s)  # about two requests' worth on this machine, now
    job_id, _ = submit(
        app, files, rounds=1, workers_per_round=1, inner_steps=steps, max_attempts=2, task_time_limit_s=60
    )  # a review budget of 240 s
    task = _contest(app, (NODES[0], NODES[1]))
    asyncio.run(app.runtime.refereed(referee(app.runtime, app.blobs).warm))  # its start is not a request
    tripwire.arm()  # the task runs in the referee's child, not here

    def between() -> None:
        if app.store.tasks.get_task(task).state == "contested":  # between parts: nobody blamed yet
            assert app.store.jobs.get_job(job_id).state == JobState.RUNNING
            assert app.store.nodes.get_node(NODES[0]).rejections == 1  # type: ignore[union-attr]

    requests = review_requests(app.verification.reviews, task, between)
    tripwire.disarm()
    assert len(requests) >= 3, requests  # two parts at least, then the empty look: longer than one request
    # each a request at most (and its bookkeeping)
    assert each_within(requests, app.config.referee_time_s + 2.0), requests
    assert app.verification.reviews.reviewed == 1
    with app.store.engine.connect() as conn:
        row = conn.execute(s.tasks.select().where(s.tasks.c.task_id == task)).one()
    assert row.state == "pending" and row.failures == 0, row  # no attempt spent
    [disproved] = [e.message for e in app.store.jobs.events_after(job_id, 0) if "claims disproved" in e.message]
    assert "inner steps ran" in disproved
    assert not any((app.blobs.root / "reviews").iterdir())  # its parts' state is gone with the review
    assert app.store.jobs.get_job(job_id).state == JobState.RUNNING


def test_a_review_past_its_budget_is_undecided_with_each_request_bounded(
    impatient: Coordinator, programs: dict[str, Path], tripwire: Any
) -> None:
    """Two nodes claim a task whose every inner step is far past the referee's one second: each
    part times out and is charged until the task's review budget (here one request: the budget
    factor is 0) is spent, or a one-step part has timed out twice; then the review is undecided
    (before, the claims were confirmed: two colluding nodes failed any task too heavy for the
    coordinator's CPU). Nothing is spent: the task goes to nodes that never claimed it. Each
    request took about the referee's limit, not the task's time."""
    app = impatient
    app.verification.reviews.budget_factor = 0.0  # the budget: one request, whatever the task's time limit
    files = {"train": programs["slow-train"], "dataset": programs["dataset"]}
    job_id, _ = submit(app, files, rounds=1, workers_per_round=1, inner_steps=8, max_attempts=2)
    task = _contest(app, (NODES[0], NODES[1]))
    tripwire.arm()
    started = time.monotonic()
    asyncio.run(app.verification.reviews.review_pending(lambda job, done: None))
    took = time.monotonic() - started
    tripwire.disarm()
    with app.store.engine.connect() as conn:
        row = conn.execute(s.tasks.select().where(s.tasks.c.task_id == task)).one()
    assert row.state == "pending" and row.failures == 0 and row.undecided_ms is not None, row  # nothing spent
    [undecided] = [e.message for e in app.store.jobs.events_after(job_id, 0) if e.kind == "undecided"]
    assert "over its review budget" in undecided, undecided
    assert took < 90, took  # the child's starts and a second's run per request, whatever the task would take
    assert app.store.jobs.get_job(job_id).state == JobState.RUNNING
