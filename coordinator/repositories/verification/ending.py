"""Ending a job from verification: the program is not verifiable, or one task's results keep
being disputed. Nothing is retried without limit, and honest work done so far stays paid."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select, update

from coordinator.db import schema as s
from coordinator.repositories.jobs import OPEN_CHECK_STATES, end_job
from coordinator.repositories.ledger import credits as ledger
from tensorgrid.types import JobState

# A task whose results were taken back this often fails its job. Counted over results with the
# same output: honest nodes all giving one output the referee rejects point at the program or the
# referee, while as many cheaters caught with outputs of their own (sybils leasing the task in turn)
# must not end a submitter's job. Distinct outputs end it only past MAX_DISPUTES_ANY_OUTPUT.
MAX_DISPUTE_ROUNDS = 6
MAX_DISPUTES_ANY_OUTPUT = 4 * MAX_DISPUTE_ROUNDS
checks = s.checks


def disputes_end_the_task(conn: Connection, task_id: str) -> int | None:
    """How many of this task's results taken back after a check (caught or inconclusive) end its
    job: the most with one output once MAX_DISPUTE_ROUNDS, or all of them once
    MAX_DISPUTES_ANY_OUTPUT; None while the task may be redone."""
    c = checks.c
    by_output = list(
        conn.execute(
            select(func.count())
            .where(
                c.subject_task == task_id,
                c.check_id == c.root_id,
                c.state == "done",
                c.outcome.in_(("caught", "inconclusive")),
            )
            .group_by(c.subject_output)
        ).scalars()
    )
    if max(by_output, default=0) >= MAX_DISPUTE_ROUNDS:
        return max(by_output)
    if sum(by_output) >= MAX_DISPUTES_ANY_OUTPUT:
        return sum(by_output)
    return None


def fail_job(conn: Connection, job_id: str, why: str, now_ms: int) -> None:
    """End the job as failed. Results still waiting for a check are paid unverified (their
    nodes did the work; with the job ending nobody will check them) and nobody is blamed."""
    state = conn.execute(select(s.jobs.c.state).where(s.jobs.c.job_id == job_id)).scalar()
    if state not in (JobState.QUEUED.value, JobState.RUNNING.value):
        return
    c = checks.c
    waiting = conn.execute(
        select(c.check_id, c.subject_node, c.subject_task, c.subject_attempt, c.kind.label("chain")).where(
            c.job_id == job_id, c.state.in_(OPEN_CHECK_STATES), c.check_id == c.root_id
        )
    ).all()
    unpaid = [(r.subject_node, job_id, r.subject_task, r.subject_attempt) for r in waiting if r.chain != "canary"]
    if unpaid:
        ledger.credit_results(conn, unpaid, now_ms)
    open_checks = update(checks).where(c.job_id == job_id, c.state.in_(OPEN_CHECK_STATES))
    conn.execute(open_checks.values(state="done", outcome="abandoned"))
    conn.execute(
        update(s.referee_rulings)
        .where(s.referee_rulings.c.job_id == job_id, s.referee_rulings.c.state == "pending")
        .values(state="failed", error="the job ended")
    )
    end_job(conn, job_id, JobState.FAILED, now_ms, error=why[:2000])


def task_index(conn: Connection, task_id: str) -> Any:
    return conn.execute(select(s.tasks.c.idx).where(s.tasks.c.task_id == task_id)).scalar()
