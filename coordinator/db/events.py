"""The job event log: every change a watcher should see is appended in the transaction that makes it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, update

from coordinator.db import schema as s


def append_event(
    conn: Connection, job_id: str, kind: str, now_ms: int, job_values: dict[str, Any] | None = None, **fields: Any
) -> Any:
    """Append to the job's event log in the caller's transaction (so it commits with the change).

    job_values are applied to the job row in the same statement; returns the updated counters.
    """
    row = conn.execute(
        update(s.jobs)
        .where(s.jobs.c.job_id == job_id)
        .values(event_seq=s.jobs.c.event_seq + 1, updated_ms=now_ms, **(job_values or {}))
        .returning(s.jobs.c.event_seq, s.jobs.c.tasks_done, s.jobs.c.tasks_total, s.jobs.c.state)
    ).one()
    conn.execute(
        insert(s.events).values(
            job_id=job_id,
            seq=row.event_seq,
            kind=kind,
            time_ms=now_ms,
            tasks_done=row.tasks_done,
            tasks_total=row.tasks_total,
            state=row.state,
            **fields,
        )
    )
    return row
