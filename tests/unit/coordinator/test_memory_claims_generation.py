"""A CPU node's OUT_OF_MEMORY report on a generation task, on SQLite and PostgreSQL: a claim that the
submitter's decoder needs more than the task's memory limit (repositories.limit_claims, "Over its memory
limit"), reviewed by the referee's measured run of the decoding loop (kinds.generation.replay
.measure_decoding): past 1.25× the limit, confirmed (the job fails naming the memory limit, the
claimants paid by a draw); within half of it, disproved (the claimants keep their refusals). Before,
the generation kind registered no measure: each report was its node's own failure, unpaid.

The kinds are the coordinator's own (InferenceKind, GenerationKind registering on a real
Verification); only their measured runs are given here (Measured). A check task of a generation job
runs the decoding loop, so it is measured by it, chosen by its settings' task kind, not by the
inference kind that registers check tasks (before: inference's run of a decoder raised and confirmed
the claims). The real measured run: tests/security/test_memory_generation.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coordinator.db import schema
from coordinator.events import EventHub
from coordinator.kinds.generation import GenerationKind
from coordinator.kinds.inference import InferenceKind
from coordinator.repositories.ledger import claim_pay
from coordinator.repositories.store import Store
from coordinator.services.verification.manager import Verification
from tensorgrid.blobs import BlobStore
from tensorgrid.crypto import normalize_address
from tensorgrid.sandbox import SandboxLimits
from tensorgrid.sandbox.measured import Measured
from tensorgrid.types import JobState
from tests.unit.coordinator import test_review_parts as parts
from tests.unit.coordinator.test_claim_pay import REWARD, paid
from tests.unit.coordinator.test_claim_reviews import _Runtime
from tests.unit.coordinator.test_claims import AVOID, TASK, claim
from tests.unit.coordinator.test_memory_claims import LIMIT, OOM, MiB
from tests.unit.coordinator.test_program_errors import A, B, job_of_rows, node, task_failures
from tests.unit.coordinator.test_review_parts import Clock, turn
from tests.unit.coordinator.test_review_rows import ROWS
from tests.unit.coordinator.test_storage import CPU, JOB

state, blobs, clock = parts.state, parts.blobs, parts.clock  # the fixtures: a store on each database

DECODE = {"max_new_tokens": 8, "vocab_size": 32, "temperature": 0.0}
SETTINGS = {"generation": DECODE, "device": "any", "task_kind": "generation"}  # as GenerationKind.plan writes


class Measure:
    """One kind's measured run of the task: what it gives, and what it was asked."""

    def __init__(self, measured: Measured | None = None) -> None:
        self.measured = measured
        self.asked: list[tuple[dict[str, Any], int, int]] = []

    def __call__(self, model: Path, source: Path, settings: dict[str, Any], stop: int, mark: int) -> Measured:
        assert model.exists() and source.exists()  # the job's program and the task's input, from the store
        self.asked.append((settings, stop, mark))
        assert self.measured is not None, "measured by the wrong kind's run"
        return self.measured


def grid(state: Store, blobs: BlobStore, tmp_path: Path, measured: Measured) -> tuple[Verification, Measure, Measure]:
    """A generation job's one task (ROWS prompts, a limit of LIMIT, a time limit of 4 s) on a
    coordinator whose inference and generation kinds registered their measures; those measures
    replaced by given ones: (verification, generation's, inference's)."""
    v = Verification(_Runtime(time_s=10.0), state, blobs, b"secret", None)  # type: ignore[arg-type]
    v.rt.sandbox = SandboxLimits(time_s=10.0, memory_bytes=4 << 30)
    hub = EventHub()
    InferenceKind(v, hub), GenerationKind(v, hub)
    assert set(v.reviews.measures) == {"inference", "spotcheck", "generation"}  # app.py: store.tasks.measured
    decoding, rows = Measure(measured), Measure()
    v.runs.measures.update(generation=decoding, inference=rows)
    state.tasks.reviewed = frozenset({"inference", "spotcheck", "generation"})
    state.tasks.measured = frozenset(v.reviews.measures)
    job_of_rows(state, blobs, tmp_path, (A, CPU), (B, CPU))
    with state.engine.begin() as conn:
        conn.execute(schema.jobs.update().values(kind="generation"))
        t = {"memory_limit_bytes": LIMIT, "time_limit_ms": 4000, "settings": json.dumps(SETTINGS)}
        conn.execute(schema.tasks.update().values(kind="generation", **t))
    return v, decoding, rows


def claimed_and_reviewed(state: Store, v: Verification, clock: Clock, *, as_check: bool = False) -> None:
    """Both nodes' OOM claims; the referee's review run to its verdict. as_check: the contested task
    is a check task of the job (its kind CHECK_KIND, its settings the subject's)."""
    assert claim(state, A, AVOID, OOM) is True
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0  # a claim: no attempt
    assert claim(state, B, 2 * AVOID, OOM) is True
    assert state.tasks.get_task(TASK).state == "contested"
    if as_check:
        with state.engine.begin() as conn:
            conn.execute(schema.tasks.update().values(kind=schema.CHECK_KIND))
    while state.tasks.get_task(TASK).state == "contested":
        turn(v.reviews)


@pytest.mark.parametrize("as_check", [False, True], ids=["task", "check-task"])
def test_a_decoder_over_its_memory_limit_fails_the_job_and_pays_the_claimants(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_check: bool
) -> None:
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: 0)  # both claimants win their draw
    # the decoding loop passed the limit 1 s in and was stopped at 1.25× it, 2 s in
    v, decoding, rows = grid(state, blobs, tmp_path, Measured(700 * MiB, True, 2.0, None, crossed_s=1.0))
    claimed_and_reviewed(state, v, clock, as_check=as_check)
    assert decoding.asked == [(SETTINGS, int(1.25 * LIMIT), LIMIT)] and rows.asked == []  # the decoding loop ran
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED, job
    assert "out_of_memory: its program needs more than its memory limit of 512 MiB" in job.error, job.error
    assert node(state, A) == node(state, B) == (0, 0, 0)  # unblamed
    assert paid(state) == {normalize_address(A): REWARD, normalize_address(B): REWARD}
    [said] = [e.message for e in state.jobs.events_after(JOB, 0) if "units of work" in e.message]
    assert f"after 24 of its {ROWS} units" in said, said  # 1 s of the 4 s limit: a quarter of its prompts


@pytest.mark.parametrize("as_check", [False, True], ids=["task", "check-task"])
def test_a_decoder_comfortably_within_its_limit_refuses_the_claimants(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, as_check: bool
) -> None:
    v, decoding, rows = grid(state, blobs, tmp_path, Measured(200 * MiB, False, 1.0, 1.0, answer={}))
    claimed_and_reviewed(state, v, clock, as_check=as_check)
    assert len(decoding.asked) == 1 and rows.asked == []
    assert state.tasks.get_task(TASK).state == "pending" and task_failures(state) == 0
    assert state.jobs.get_job(JOB).state != JobState.FAILED
    assert node(state, A) == node(state, B) == (1, 1, 1)  # each keeps its refusal
    assert paid(state) == {}
    said = [e.message for e in state.jobs.events_after(JOB, 0) if "claims disproved" in e.message]
    assert said and "holding at most 200 MiB, within 0.5× its memory limit of 512 MiB" in said[0], said


def test_a_task_of_a_kind_no_measure_is_registered_for_is_undecided_not_judged_by_another(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path
) -> None:
    """A check task whose settings name a kind that registered no measure (a kind added later) is
    never measured by inference's run (which would fail on a program not its own and confirm)."""
    v, decoding, rows = grid(state, blobs, tmp_path, Measured(200 * MiB, False, 1.0, 1.0, answer={}))
    del v.runs.measures["generation"]
    claimed_and_reviewed(state, v, clock, as_check=True)
    assert rows.asked == [] and decoding.asked == []
    assert state.jobs.get_job(JOB).state != JobState.FAILED
    assert any(e.kind == "undecided" for e in state.jobs.events_after(JOB, 0))
