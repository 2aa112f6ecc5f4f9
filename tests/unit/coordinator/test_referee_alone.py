"""An untrusted node's result is spot-checked by the referee alone (CheckPlan.direct): no node
runs the check, the referee re-runs the same m rows a checker's agreement would have needed it to
confirm, and rules as on a dispute. If the referee cannot run it, a drawn node runs it as before.

Through the repositories and the accepting transaction (as test_checkers), the real check-building
code (Verification.examine) and the referee's own re-execution (as test_referee_ahead).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from sqlalchemy import select

from coordinator.db.schema import checks
from coordinator.kinds.inference.effects import OpenCheck
from coordinator.repositories.store import Store
from coordinator.repositories.tasks import TaskRecord
from coordinator.repositories.verification.checks import CheckPlan
from coordinator.repositories.verification.rulings import Ruling, RulingInfo
from coordinator.services.acceptance import ResultAcceptance, ResultItem
from coordinator.services.verification.manager import Verification
from tensorgrid.blobs import BlobStore
from tensorgrid.spec import VerificationSpec, task_id_for
from tensorgrid.spec.verification import detection_rows
from tensorgrid.types import BlobRef
from tensorgrid.workloads.tensorfile import save_tensors
from tests.unit.coordinator import test_checkers as checkers
from tests.unit.coordinator import test_referee_ahead as ahead
from tests.unit.coordinator.test_checkers import (
    INPUT,
    JOB,
    NOW,
    OUT,
    REF_OUT,
    SUBJECT,
    TIMING,
    B,
    C,
    assignee,
    make_job,
    receipt,
    submit_check,
)
from tests.unit.coordinator.test_referee_ahead import ROWS, SETTINGS, Referee, honest_rows

state = checkers.state  # the fixtures: a store on each database, and a referee replaying in process
referee = ahead.referee


def referee_check(state: Store, rows: int = 400, sampled: tuple[int, ...] = tuple(range(0, 400, 40))) -> str:
    """The subject's result accepted with a direct spot-check of its `sampled` rows; the check's id."""
    make_job(state, rows=rows)
    (lease,), _ = state.tasks.lease_tasks(SUBJECT, 1, NOW, TIMING)
    plan = CheckPlan("c1" * 32, BlobRef(INPUT, 0), sampled, direct=True)
    (outcome,) = ResultAcceptance(state.engine).accept_results(
        [ResultItem(SUBJECT, receipt(lease.task_id, 1), BlobRef(OUT, 3), rows, OpenCheck(plan))], NOW
    )
    assert outcome == (JOB, False)
    return plan.check_task_id


def test_no_node_runs_an_untrusted_subjects_check_the_referee_rules_on_its_rows(state: Store) -> None:
    check_id = referee_check(state)
    m = detection_rows(VerificationSpec(), 1, 400)
    for node in (SUBJECT, B, C):
        assert state.tasks.lease_tasks(node, 5, NOW + 1, TIMING)[0] == []  # nobody sees the check
    assert assignee(state, check_id) is None
    (pending,) = state.verification.pending_rulings()
    # every row of the check, as a checker's agreement would have had the referee confirm
    assert pending.check_id == check_id and pending.checkers == [] and pending.rows_limit == m == 10
    assert state.jobs.jobs_to_aggregate() == []  # held until the ruling
    assert state.verification.apply_ruling(check_id, Ruling(REF_OUT, False, ()), NOW + 3) == (JOB, False)
    assert state.verification.reputation(SUBJECT).caught == 1
    assert state.tasks.get_task(task_id_for(JOB, 0)).state == "pending"  # its work is redone


def test_a_right_subject_is_verified_by_the_referee_alone(state: Store) -> None:
    check_id = referee_check(state)
    assert state.verification.apply_ruling(check_id, Ruling(REF_OUT, True, ()), NOW + 3) == (JOB, True)
    assert state.verification.reputation(SUBJECT).verified == 1
    assert "verified" in [e.kind for e in state.jobs.events_after(JOB, 0)]


def test_a_check_the_referee_cannot_run_goes_to_a_drawn_node_as_before(state: Store) -> None:
    check_id = referee_check(state)
    assert state.verification.fail_ruling(check_id, "RuntimeError: no CUDA here", NOW + 3) == JOB
    checker = assignee(state, check_id)
    assert checker in (B, C)  # never the subject
    submit_check(state, checker, check_id, agrees=True, rows=10)
    # the referee cannot confirm the agreement either: it verifies nothing, as a failed confirmation
    assert state.verification.pending_rulings() == []
    assert "unverified" in [e.kind for e in state.jobs.events_after(JOB, 0)]
    assert state.jobs.jobs_to_aggregate() == [JOB]


def test_a_disagreement_on_a_check_the_referee_could_not_run_goes_to_a_tiebreak(state: Store) -> None:
    check_id = referee_check(state)
    state.verification.fail_ruling(check_id, "RuntimeError: no CUDA here", NOW + 3)
    checker = assignee(state, check_id)
    assert checker is not None
    submit_check(state, checker, check_id, agrees=False, rows=10)
    with state.engine.connect() as conn:
        kinds = sorted(r.kind for r in conn.execute(select(checks.c.kind).where(checks.c.root_id == check_id)))
    assert kinds == ["spotcheck", "tiebreak"]
    assert state.jobs.jobs_to_aggregate() == []


class _Runtime:
    @staticmethod
    async def db(fn: Any, *args: Any) -> Any:
        return fn(*args)

    work = db


def _plan(tmp_path: Path, policy: VerificationSpec, streak: int, referee_alone: bool) -> CheckPlan:
    """Verification.examine's check of a 400-row result by a node with this streak."""
    blobs = BlobStore(tmp_path / f"blobs-{streak}-{policy.mode}-{referee_alone}")
    save_tensors({"x": torch.zeros(400, 2)}, tmp_path / "in.safetensors")
    shard = blobs.put_file(tmp_path / "in.safetensors")
    spec = json.dumps(policy.__dict__)
    store = SimpleNamespace(
        verification=SimpleNamespace(
            check_info=lambda task_id, node: None,
            job_policy=lambda job_id: (json.loads(spec), 0),
            streak=lambda node, job_id, after: streak,
        ),
        jobs=SimpleNamespace(get_job=lambda job_id: SimpleNamespace(tasks_total=1)),
    )
    verification = Verification(_Runtime(), store, blobs, b"secret", None)  # type: ignore[arg-type]
    record = TaskRecord("t" * 64, JOB, 0, "running", "inference", 1, SUBJECT, None, shard, 400)
    check, verdict = asyncio.run(verification.examine(record, SUBJECT, shard, referee_alone=referee_alone))
    assert check is not None and verdict is None
    return check


def test_only_an_untrusted_subjects_spot_check_goes_to_the_referee_alone(tmp_path: Path) -> None:
    spot = VerificationSpec(check_floor=1.0)  # a trusted node is checked every time too, here
    new = _plan(tmp_path, spot, 0, True)
    assert new.direct and not new.ahead and len(new.rows) == detection_rows(spot, 1, 400)
    trusted = _plan(tmp_path, spot, 10, True)
    assert not trusted.direct and not trusted.ahead  # a trusted pair's agreement verifies: a node checks
    assert not _plan(tmp_path, spot, 0, False).direct  # a kind whose referee does not re-run as nodes do
    whole = _plan(tmp_path, VerificationSpec(mode="replicate"), 0, True)
    assert not whole.direct and whole.ahead and len(whole.rows) == 400  # a whole shard is a node's to run


def test_the_referee_alone_catches_a_wrong_subject_and_verifies_a_right_one(referee: Referee, tmp_path: Path) -> None:
    def alone(subject: str) -> RulingInfo:
        return RulingInfo(
            check_id="c" * 64,
            job_id="j" * 64,
            model_sha=referee.model,
            input_sha=referee.check,
            settings=SETTINGS,
            subject_output=subject,
            rows=ROWS,
            checkers=[],
            rows_limit=len(ROWS),
            shard_sha=referee.shard,
            subject_node=SUBJECT,
        )

    ruling, _ = referee.verification._reexecute(alone(referee.subject))
    assert ruling.subject_right and not ruling.reason
    wrong_rows = honest_rows(referee).clone()
    wrong_rows[1, 0] += 1.0  # one value of one row
    full = torch.zeros(12, 4)
    full[ROWS] = wrong_rows
    wrong = referee.output(full, tmp_path, "wrong.safetensors")
    ruling, how = referee.verification._reexecute(alone(wrong))
    assert not ruling.subject_right and not ruling.reason and how == "re-run"  # sound: blamed


def test_a_leased_shard_is_read_for_foresee_only_while_its_node_holds_that_lease(state: Store) -> None:
    """Verification.leased's re-run ahead reads the shard through leased_shard: never for a lease
    given back, reissued or answered (a node leasing and dropping shards gets no referee work
    per lease), and with the settings a ruling on its check reads (the re-run's key)."""
    import dataclasses

    from coordinator.repositories.jobs import NewTask

    model = BlobRef("ab" * 32, 10)
    job = dataclasses.replace(_job(), model=model, settings_json=json.dumps(SETTINGS))
    state.jobs.create_job(job, [NewTask(0, task_id_for(JOB, 0), BlobRef(INPUT, 0), 400)], now_ms=1)
    (lease,), _ = state.tasks.lease_tasks(SUBJECT, 1, NOW, TIMING)
    shard = state.verification.leased_shard(lease.task_id, lease.attempt, SUBJECT)
    assert shard is not None and (shard.model_sha, shard.input_sha, shard.rows) == (model.sha256, INPUT, 400)
    assert state.verification.leased_shard(lease.task_id, lease.attempt + 1, SUBJECT) is None  # another attempt
    assert state.verification.leased_shard(lease.task_id, lease.attempt, B) is None  # another node
    plan = CheckPlan("c1" * 32, BlobRef(INPUT, 0), (0, 40), direct=True)
    ResultAcceptance(state.engine).accept_results(
        [ResultItem(SUBJECT, receipt(lease.task_id, 1), BlobRef(OUT, 3), 400, OpenCheck(plan))], NOW
    )
    assert state.verification.leased_shard(lease.task_id, lease.attempt, SUBJECT) is None  # answered
    (pending,) = state.verification.pending_rulings()
    assert pending.settings == shard.settings and pending.model_sha == shard.model_sha


def _job() -> Any:
    from tests.jobs import new_job

    return new_job(JOB, kind="inference", verification_json='{"mode": "spotcheck", "trust_after": 10}')
