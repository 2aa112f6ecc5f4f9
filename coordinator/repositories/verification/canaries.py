"""Canaries: a verified shard re-leased whole to another node, a task with a known answer.

Indistinguishable from an ordinary task: a fresh id, the full shard's size, queued in its
job's turn, and an input no node has seen: the shard's rows shuffled (the canary's `rows`
say where each came from), so its hash is not the original shard's. The shuffled input is
written when the result's spot-check is opened (blob work stays off the accept
transaction); the canary opens only if that check verifies the result.
"""

from __future__ import annotations

import json

from sqlalchemy import Connection, delete, insert, select

from coordinator.db import schema as s

canary_plans = s.canary_plans


def save(conn: Connection, check_id: str, canary_id: str, input_sha: str, input_size: int, rows: list[int]) -> None:
    conn.execute(
        insert(canary_plans).values(
            check_id=check_id, canary_id=canary_id, input_sha=input_sha, input_size=input_size, rows=json.dumps(rows)
        )
    )


def take(conn: Connection, check_id: str) -> tuple[str, str, int, tuple[int, ...]] | None:
    """(canary id, input sha, input size, rows) prepared for this check, removed; None if none."""
    row = conn.execute(select(canary_plans).where(canary_plans.c.check_id == check_id)).first()
    if row is None:
        return None
    conn.execute(delete(canary_plans).where(canary_plans.c.check_id == check_id))
    return str(row.canary_id), str(row.input_sha), int(row.input_size), tuple(json.loads(row.rows))


def drop(conn: Connection, check_id: str) -> None:
    conn.execute(delete(canary_plans).where(canary_plans.c.check_id == check_id))
