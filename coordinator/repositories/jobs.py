"""Jobs: creating, reading, cancelling and finishing them; when a job is complete."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, func, insert, select, update

from coordinator.db import schema as s
from coordinator.db.events import append_event
from coordinator.errors import Conflict, NotFound, PermissionDenied
from tensorgrid.types import BlobRef, JobEvent, JobInfo, JobState


@dataclass(frozen=True)
class NewTask:
    """A task as the job splitter makes it."""

    index: int
    task_id: str
    input: BlobRef
    rows: int
    decoy_unit_rows: int = 0  # a decoy's: the rows one reward pays for (it is paid by rows); 0 otherwise


@dataclass(frozen=True)
class NewJob:
    job_id: str
    submitter: str
    kind: str
    spec_json: bytes
    spec_hash: str
    device: str
    min_memory_bytes: int
    model: BlobRef | None
    settings_json: str
    memory_limit_bytes: int
    time_limit_ms: int
    max_attempts: int
    reward_per_task_wei: int = 0
    verification_json: str = ""  # the job's verification policy; empty: none
    required_stake_wei: int = 0


OPEN_CHECK_STATES = ("open", "disputed")


class JobRepository:
    """Jobs over one engine; each method is its own transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_job(self, job: NewJob, new_tasks: list[NewTask], now_ms: int) -> tuple[JobInfo, bool]:
        """Store a job and its tasks; returns (job, created). The same job id twice is a no-op."""
        with self.engine.begin() as conn:
            existing = conn.execute(select(s.jobs).where(s.jobs.c.job_id == job.job_id)).first()
            if existing is not None:
                return _job_info(existing), False
            conn.execute(
                insert(s.jobs).values(
                    job_id=job.job_id,
                    submitter=job.submitter,
                    kind=job.kind,
                    state=JobState.QUEUED.value,
                    spec_json=job.spec_json,
                    spec_hash=job.spec_hash,
                    created_ms=now_ms,
                    updated_ms=now_ms,
                    tasks_total=len(new_tasks),
                    tasks_done=0,
                    task_failures=0,
                    error="",
                    event_seq=0,
                )
            )
            if new_tasks:
                conn.execute(insert(s.tasks), [_task_row(job, t, now_ms) for t in new_tasks])
            decoys = [
                dict(task_id=t.task_id, job_id=job.job_id, rows=t.rows, unit_rows=t.decoy_unit_rows,
                     drawn_attempt=-1, won=False)
                for t in new_tasks if t.decoy_unit_rows
            ]  # fmt: skip
            if decoys:
                conn.execute(insert(s.decoys), decoys)
            if job.verification_json:  # with the job, so no result can arrive before its policy
                conn.execute(
                    insert(s.job_policies).values(
                        job_id=job.job_id, policy=job.verification_json, required_stake_wei=job.required_stake_wei
                    )
                )
            append_event(conn, job.job_id, "submitted", now_ms, message=f"{len(new_tasks)} tasks")
            row = conn.execute(select(s.jobs).where(s.jobs.c.job_id == job.job_id)).one()
        return _job_info(row), True

    def get_job(self, job_id: str) -> JobInfo:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.jobs).where(s.jobs.c.job_id == job_id)).first()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return _job_info(row)

    def list_jobs(self, submitter: str = "", limit: int = 50, before_job_id: str = "") -> list[JobInfo]:
        q = select(s.jobs).order_by(s.jobs.c.created_ms.desc(), s.jobs.c.job_id.desc())
        if submitter:
            q = q.where(s.jobs.c.submitter == submitter)
        with self.engine.connect() as conn:
            if before_job_id:
                ref = conn.execute(select(s.jobs.c.created_ms).where(s.jobs.c.job_id == before_job_id)).first()
                if ref is not None:
                    q = q.where(s.jobs.c.created_ms < ref.created_ms)
            rows = conn.execute(q.limit(max(1, min(limit or 50, 1000)))).all()
        return [_job_info(r) for r in rows]

    def cancel_job(self, job_id: str, caller: str, now_ms: int) -> JobInfo:
        """Cancel a job on behalf of its submitter; a finished job stays as it is."""
        with self.engine.begin() as conn:
            # The job's open tasks first, then the job: the order results take them in (a result
            # locks its task, then counts it on its job). Job first deadlocked with every result
            # arriving meanwhile, four times over on a busy job (benchmarks.fleet).
            conn.execute(
                select(s.tasks.c.task_id)
                .where(s.tasks.c.job_id == job_id, s.tasks.c.state.in_(s.OPEN_TASK_STATES))
                .order_by(s.tasks.c.task_id)
                .with_for_update()
            ).all()
            row = conn.execute(select(s.jobs).where(s.jobs.c.job_id == job_id).with_for_update()).first()
            if row is None:
                raise NotFound(f"no job {job_id}")
            if row.submitter.lower() != caller.lower():
                raise PermissionDenied("only the job's submitter may cancel it")
            if JobState(row.state).finished:
                return _job_info(row)
            end_job(conn, job_id, JobState.CANCELLED, now_ms, error="cancelled by the submitter")
            row = conn.execute(select(s.jobs).where(s.jobs.c.job_id == job_id)).one()
        return _job_info(row)

    def start_job(self, job_id: str, now_ms: int, node: str = "") -> bool:
        """A queued job starts running (an endpoint, once it is served); False if it was not queued.
        Its escrow is locked from then on, as at a batch job's first lease: no free work."""
        from coordinator.repositories.ledger.escrow import lock_job  # the ledger imports this module

        with self.engine.begin() as conn:
            started = conn.execute(
                update(s.jobs)
                .where(s.jobs.c.job_id == job_id, s.jobs.c.state == JobState.QUEUED.value)
                .values(state=JobState.RUNNING.value, updated_ms=now_ms)
            )
            if not started.rowcount:
                return False
            if node:
                append_event(conn, job_id, "running", now_ms, node=node)
            else:
                append_event(conn, job_id, "running", now_ms)
            lock_job(conn, job_id, now_ms)
        return True

    def live_jobs_of_kind(self, kind: str) -> list[JobInfo]:
        """Queued or running jobs of one kind (the endpoints a coordinator serves at start)."""
        live = [JobState.QUEUED.value, JobState.RUNNING.value]
        with self.engine.connect() as conn:
            rows = conn.execute(select(s.jobs).where(s.jobs.c.kind == kind, s.jobs.c.state.in_(live))).all()
        return [_job_info(r) for r in rows]

    def finish_job(self, job_id: str, result: BlobRef | None, error: str, now_ms: int) -> JobInfo:
        """Record the aggregated result (or the reason the job failed)."""
        state = JobState.SUCCEEDED if result is not None else JobState.FAILED
        with self.engine.begin() as conn:
            row = conn.execute(select(s.jobs.c.state).where(s.jobs.c.job_id == job_id).with_for_update()).first()
            if row is None:
                raise NotFound(f"no job {job_id}")
            if JobState(row.state).finished:
                raise Conflict(f"job {job_id} already {row.state}")
            end_job(conn, job_id, state, now_ms, error=error, result=result)
            out = conn.execute(select(s.jobs).where(s.jobs.c.job_id == job_id)).one()
        return _job_info(out)

    def jobs_to_aggregate(self) -> list[str]:
        """Jobs whose every task is done but whose result is not yet assembled (e.g. after a restart).

        A job with no tasks (an endpoint: its work is requests) has nothing to assemble."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(s.jobs.c.job_id).where(
                    and_(
                        s.jobs.c.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
                        s.jobs.c.tasks_total > 0,
                        s.jobs.c.tasks_done == s.jobs.c.tasks_total,
                        no_open_checks(),
                    )
                )
            ).all()
        return [r.job_id for r in rows]

    def task_outputs(self, job_id: str) -> list[BlobRef]:
        """Output blobs of a finished job's tasks, in task order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(s.tasks.c.output_sha, s.tasks.c.output_size, s.tasks.c.state)
                .where(s.tasks.c.job_id == job_id, s.tasks.c.kind != s.CHECK_KIND)
                .order_by(s.tasks.c.idx)
            ).all()
        if any(r.state != "done" for r in rows):
            raise Conflict(f"job {job_id} has unfinished tasks")
        return [BlobRef(r.output_sha, r.output_size) for r in rows]

    def events_after(self, job_id: str, after_seq: int, limit: int = 500) -> list[JobEvent]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(s.events)
                .where(and_(s.events.c.job_id == job_id, s.events.c.seq > after_seq))
                .order_by(s.events.c.seq)
                .limit(limit)
            ).all()
        return [_event_info(r) for r in rows]


def end_job(
    conn: Connection,
    job_id: str,
    state: JobState,
    now_ms: int,
    *,
    error: str = "",
    result: BlobRef | None = None,
) -> None:
    """End a job in the caller's transaction: its state, its unfinished tasks cancelled, an event."""
    values: dict[str, Any] = dict(state=state.value, updated_ms=now_ms, error=error)
    if result is not None:
        values.update(result_sha=result.sha256, result_size=result.size)
    conn.execute(update(s.jobs).where(s.jobs.c.job_id == job_id).values(**values))
    conn.execute(
        update(s.tasks)
        .where(and_(s.tasks.c.job_id == job_id, s.tasks.c.state.in_(s.OPEN_TASK_STATES)))
        .values(state="cancelled", node=None, deadline_ms=None)
    )
    append_event(conn, job_id, state.value, now_ms, message=error)


def open_checks(conn: Connection, job_id: str) -> int:
    """How many of the job's checks are still open (they hold up its completion)."""
    c = s.checks
    return int(
        conn.execute(
            select(func.count()).select_from(c).where(c.c.job_id == job_id, c.c.state.in_(OPEN_CHECK_STATES))
        ).scalar_one()
    )


def no_open_checks() -> Any:
    """SQL condition on s.jobs: none of the job's checks is still open."""
    c = s.checks
    return ~exists(select(c.c.check_id).where(and_(c.c.job_id == s.jobs.c.job_id, c.c.state.in_(OPEN_CHECK_STATES))))


def job_complete(conn: Connection, job_id: str) -> bool:
    """A job is complete once every task is done and every check of its results is settled."""
    job = conn.execute(
        select(s.jobs.c.tasks_done, s.jobs.c.tasks_total, s.jobs.c.state).where(s.jobs.c.job_id == job_id)
    ).one()
    return bool(
        job.tasks_done == job.tasks_total and job.state in ("queued", "running") and open_checks(conn, job_id) == 0
    )


def _task_row(job: NewJob, t: NewTask, now_ms: int) -> dict[str, Any]:
    return dict(
        task_id=t.task_id,
        job_id=job.job_id,
        idx=t.index,
        state="pending",
        job_created_ms=now_ms,
        kind=job.kind,
        device=job.device,
        min_memory_bytes=job.min_memory_bytes,
        model_sha=job.model.sha256 if job.model else None,
        model_size=job.model.size if job.model else None,
        input_sha=t.input.sha256,
        input_size=t.input.size,
        rows=t.rows,
        settings=job.settings_json,
        memory_limit_bytes=job.memory_limit_bytes,
        time_limit_ms=job.time_limit_ms,
        max_attempts=job.max_attempts,
        attempt=0,
        failures=0,
    )


def _job_info(row: Any) -> JobInfo:
    r = row._mapping
    result = BlobRef(r["result_sha"], r["result_size"]) if r["result_sha"] else None
    return JobInfo(
        job_id=r["job_id"],
        submitter=r["submitter"],
        kind=r["kind"],
        state=JobState(r["state"]),
        spec_json=bytes(r["spec_json"]),
        spec_hash=r["spec_hash"],
        created_ms=r["created_ms"],
        updated_ms=r["updated_ms"],
        tasks_total=r["tasks_total"],
        tasks_done=r["tasks_done"],
        task_failures=r["task_failures"],
        result=result,
        error=r["error"],
    )


def _event_info(row: Any) -> JobEvent:
    r = row._mapping
    return JobEvent(
        seq=r["seq"],
        job_id=r["job_id"],
        kind=r["kind"],
        time_ms=r["time_ms"],
        task_index=r["task_index"],
        node=r["node"],
        message=r["message"],
        tasks_done=r["tasks_done"],
        tasks_total=r["tasks_total"],
        state=JobState(r["state"]),
    )
