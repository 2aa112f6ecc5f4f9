"""Round state in SQL: where a training job stands, and closing a round in one transaction.

A round r of a job with W workers per round owns task indices [r·W, (r+1)·W). It is open
until its row exists in training_rounds; closing it (round row, metrics event, cancelling
the round's unfinished tasks, the next round's tasks, or the job's result after the last
round) commits at once, so a crash leaves either the old round open or the new one open.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, func, insert, select, update

from coordinator.db import schema as s
from coordinator.db.events import append_event
from coordinator.errors import Conflict, NotFound
from coordinator.repositories.jobs import end_job
from coordinator.repositories.tasks import ENDED
from tensorgrid.spec import TrainingSpec, task_id_for
from tensorgrid.types import BlobRef, JobState

TASK_KIND = "training"  # create_job stamps round 0 with the job kind; later rounds match it
tr = s.training_rounds
_OPEN = (JobState.QUEUED.value, JobState.RUNNING.value)


@dataclass(frozen=True)
class RoundTask:
    """One worker slot of a round: its data shard."""

    slot: int
    input: BlobRef
    rows: int


@dataclass(frozen=True)
class RoundView:
    """A training job's open round as the database has it."""

    job_id: str
    spec: TrainingSpec
    created_ms: int
    round: int
    opened_ms: int
    weights: BlobRef
    momentum: BlobRef | None
    done: tuple[tuple[int, BlobRef], ...]  # (slot, output) of the round's accepted results
    # the round's tasks still open (pending, leased, contested): none, and no more results can come
    # (its other tasks failed for good: tasks.end_task)
    open_tasks: int = -1

    @property
    def deadline_ms(self) -> int:
        return self.opened_ms + self.spec.round_deadline_s * 1000


@dataclass(frozen=True)
class ClosedRound:
    """What closing a round produced; next_tasks is empty after the last round."""

    round: int
    slots: tuple[int, ...]
    rows: int
    train_loss: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    bytes_up: int
    weights: BlobRef
    momentum: BlobRef
    next_tasks: tuple[RoundTask, ...] = ()
    next_settings: str = "{}"
    eval_error: str | None = None  # why eval_loss/eval_accuracy are unavailable, if evaluation failed

    def metrics(self, spec: TrainingSpec) -> dict[str, Any]:
        """The JSON of the job's "round" event (what the CLI and SDK show)."""
        out: dict[str, Any] = {
            "round": self.round,
            "rounds": spec.rounds,
            "loss": self.eval_loss,
            "accuracy": self.eval_accuracy,
            "train_loss": self.train_loss,
            "workers": len(self.slots),
            "rows": self.rows,
            "bytes_up": self.bytes_up,
            "weights": self.weights.sha256,
        }
        if self.eval_error is not None:
            out["eval_error"] = self.eval_error
        if self.round == spec.rounds - 1:
            out["final"] = True
            out["train_program"] = spec.train_program.sha256
            out["eval_program"] = spec.eval_program.sha256 if spec.eval_program else None
        return out


def open_training_jobs(engine: Engine) -> list[str]:
    """Training jobs that are neither finished nor cancelled."""
    with engine.connect() as conn:
        rows = conn.execute(select(s.jobs.c.job_id).where(s.jobs.c.kind == TASK_KIND, s.jobs.c.state.in_(_OPEN))).all()
    return [r.job_id for r in rows]


def round_view(engine: Engine, job_id: str) -> RoundView | None:
    """The job's open round, or None when the job is finished (or not a training job)."""
    with engine.connect() as conn:
        job = conn.execute(
            select(s.jobs.c.kind, s.jobs.c.state, s.jobs.c.spec_json, s.jobs.c.created_ms).where(
                s.jobs.c.job_id == job_id
            )
        ).first()
        if job is None:
            raise NotFound(f"no job {job_id}")
        if job.kind != TASK_KIND or job.state not in _OPEN:
            return None
        spec = TrainingSpec.from_dict(json.loads(bytes(job.spec_json)))
        last = conn.execute(select(tr).where(tr.c.job_id == job_id).order_by(tr.c.round_no.desc()).limit(1)).first()
        if last is None:
            r, opened, momentum = 0, int(job.created_ms), None
            first = conn.execute(select(s.tasks.c.settings).where(s.tasks.c.task_id == task_id_for(job_id, 0))).one()
            weights = _ref(json.loads(first.settings)["blobs"]["weights"])
        else:
            r, opened = int(last.round_no) + 1, int(last.closed_ms)
            weights = BlobRef(last.weights_sha, last.weights_size)
            momentum = BlobRef(last.momentum_sha, last.momentum_size)
        w = spec.workers_per_round
        done = conn.execute(
            select(s.tasks.c.idx, s.tasks.c.output_sha, s.tasks.c.output_size)
            .where(
                s.tasks.c.job_id == job_id,
                s.tasks.c.idx >= r * w,
                s.tasks.c.idx < (r + 1) * w,
                s.tasks.c.state == "done",
            )
            .order_by(s.tasks.c.idx)
        ).all()
        in_round = (s.tasks.c.job_id == job_id, s.tasks.c.idx >= r * w, s.tasks.c.idx < (r + 1) * w)
        still = s.tasks.c.state.in_(s.OPEN_TASK_STATES)
        open_tasks = conn.execute(select(func.count()).select_from(s.tasks).where(*in_round, still)).scalar_one()
    return RoundView(
        job_id=job_id,
        spec=spec,
        created_ms=int(job.created_ms),
        round=r,
        opened_ms=opened,
        weights=weights,
        momentum=momentum,
        done=tuple((int(d.idx) - r * w, BlobRef(d.output_sha, d.output_size)) for d in done),
        open_tasks=int(open_tasks),
    )


def close_round(engine: Engine, view: RoundView, closed: ClosedRound, now_ms: int) -> bool:
    """Record a closed round and open the next (or finish the job); True when the job is done.

    Raises Conflict when the round was closed already (another replica, a retry) or the job
    ended meanwhile (cancelled, failed).
    """
    spec, job_id, r = view.spec, view.job_id, closed.round
    w = spec.workers_per_round
    with engine.begin() as conn:
        job = conn.execute(
            select(s.jobs.c.state, s.jobs.c.tasks_total).where(s.jobs.c.job_id == job_id).with_for_update()
        ).first()
        if job is None or job.state not in _OPEN:
            raise Conflict(f"job {job_id} is no longer running")
        already = conn.execute(
            select(func.count()).select_from(tr).where(tr.c.job_id == job_id, tr.c.round_no >= r)
        ).scalar_one()
        if already:
            raise Conflict(f"round {r} of job {job_id} is closed already")
        conn.execute(
            insert(tr).values(
                job_id=job_id,
                round_no=r,
                closed_ms=now_ms,
                workers=len(closed.slots),
                slots=json.dumps(list(closed.slots)),
                rows=closed.rows,
                train_loss=closed.train_loss,
                eval_loss=closed.eval_loss,
                eval_accuracy=closed.eval_accuracy,
                bytes_up=closed.bytes_up,
                weights_sha=closed.weights.sha256,
                weights_size=closed.weights.size,
                momentum_sha=closed.momentum.sha256,
                momentum_size=closed.momentum.size,
            )
        )
        # Late results for this round are not wanted: their tasks end here, so the api
        # refuses them (a cancelled task has no lease) and heartbeats revoke them. A task the
        # referee was about to review (contested) ends too: its review is never run.
        cancelled = conn.execute(
            update(s.tasks)
            .where(
                and_(
                    s.tasks.c.job_id == job_id,
                    s.tasks.c.idx >= r * w,
                    s.tasks.c.idx < (r + 1) * w,
                    s.tasks.c.state.in_(s.OPEN_TASK_STATES),
                )
            )
            .values(state="cancelled", node=None, deadline_ms=None)
        ).rowcount
        if closed.next_tasks:
            conn.execute(insert(s.tasks), [_task_row(view, closed, t) for t in closed.next_tasks])
        total = int(job.tasks_total) - int(cancelled) + len(closed.next_tasks)
        message = json.dumps(closed.metrics(spec), sort_keys=True)
        append_event(conn, job_id, "round", now_ms, job_values={"tasks_total": total}, message=message)
        final = r == spec.rounds - 1
        if final:
            end_job(conn, job_id, JobState.SUCCEEDED, now_ms, result=closed.weights)
    return final


def fail_training(engine: Engine, job_id: str, message: str, now_ms: int) -> None:
    """End a training job that cannot go on (no results in time, nothing valid to average)."""
    with engine.begin() as conn:
        job = conn.execute(select(s.jobs.c.state).where(s.jobs.c.job_id == job_id).with_for_update()).first()
        if job is None or job.state not in _OPEN:
            raise Conflict(f"job {job_id} is no longer running")
        end_job(conn, job_id, JobState.FAILED, now_ms, error=message)


def last_ended(engine: Engine, job_id: str) -> str:
    """Why the job's latest task to fail for good ended ("task 3 failed for good: <why>": its `ended`
    event, repositories.tasks.end_task), or "" when none has."""
    e = s.events
    with engine.connect() as conn:
        row = conn.execute(
            select(e.c.message).where(e.c.job_id == job_id, e.c.kind == ENDED).order_by(e.c.seq.desc()).limit(1)
        ).first()
    return "" if row is None else str(row.message).removesuffix(" (its job goes on without it)")


def round_history(engine: Engine, job_id: str) -> list[dict[str, Any]]:
    """Every closed round of a job, oldest first (tests, tools)."""
    with engine.connect() as conn:
        rows = conn.execute(select(tr).where(tr.c.job_id == job_id).order_by(tr.c.round_no)).all()
    return [dict(r._mapping) for r in rows]


def task_settings(engine: Engine, task_id: str) -> tuple[dict[str, Any], int]:
    """A task's settings and shard rows (for checking its output)."""
    with engine.connect() as conn:
        row = conn.execute(select(s.tasks.c.settings, s.tasks.c.rows).where(s.tasks.c.task_id == task_id)).first()
    if row is None:
        raise NotFound(f"no task {task_id}")
    return json.loads(row.settings), int(row.rows)


def _task_row(view: RoundView, closed: ClosedRound, t: RoundTask) -> dict[str, Any]:
    spec = view.spec
    index = (closed.round + 1) * spec.workers_per_round + t.slot
    return dict(
        task_id=task_id_for(view.job_id, index),
        job_id=view.job_id,
        idx=index,
        state="pending",
        job_created_ms=view.created_ms,  # keeps the job's place in the lease queue
        kind=TASK_KIND,
        device=spec.device,
        min_memory_bytes=spec.min_memory_bytes,
        model_sha=spec.train_program.sha256,
        model_size=spec.train_program.size,
        input_sha=t.input.sha256,
        input_size=t.input.size,
        rows=t.rows,
        settings=closed.next_settings,
        memory_limit_bytes=spec.task_memory_limit_bytes,
        time_limit_ms=spec.task_time_limit_s * 1000,
        max_attempts=spec.max_attempts,
        attempt=0,
        failures=0,
    )


def _ref(d: Any) -> BlobRef:
    return BlobRef(str(d["sha256"]), int(d["size"]))
