"""Who owns and who may read a blob, what each submitter stores and sends, and which blobs
live jobs still reference (everything else may expire)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Engine, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from coordinator.db import schema as s
from tensorgrid.types import BlobRef, JobState

DAY_MS = 86_400_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
_LIVE = (JobState.QUEUED.value, JobState.RUNNING.value)


class BlobAccessRepository:
    """Blob ownership and upload counters; each method is its own transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record_upload(self, owner: str, ref: BlobRef, received: int, now_ms: int) -> None:
        """`owner` now owns `ref` (if not already) and sent `received` bytes today."""
        with self.engine.begin() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(s.blob_owners).values(sha256=ref.sha256, owner=owner, size=ref.size, created_ms=now_ms)
                    )
            except IntegrityError:  # already its own: a re-upload renews it
                conn.execute(
                    update(s.blob_owners)
                    .where(and_(s.blob_owners.c.sha256 == ref.sha256, s.blob_owners.c.owner == owner))
                    .values(created_ms=now_ms)
                )
            if received:
                day = now_ms // DAY_MS
                key = and_(s.upload_days.c.owner == owner, s.upload_days.c.day == day)
                done = conn.execute(update(s.upload_days).where(key).values(bytes=s.upload_days.c.bytes + received))
                if done.rowcount == 0:
                    conn.execute(insert(s.upload_days).values(owner=owner, day=day, bytes=received))

    def owns(self, owner: str, sha256: str) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(s.blob_owners.c.size).where(
                    and_(s.blob_owners.c.sha256 == sha256, s.blob_owners.c.owner == owner)
                )
            ).first()
        return row is not None

    def usage(self, owner: str, now_ms: int) -> tuple[int, int]:
        """(bytes of the blobs `owner` owns, bytes it sent today)."""
        with self.engine.connect() as conn:
            stored = conn.execute(
                select(func.coalesce(func.sum(s.blob_owners.c.size), 0)).where(s.blob_owners.c.owner == owner)
            ).scalar_one()
            today = conn.execute(
                select(s.upload_days.c.bytes).where(
                    and_(s.upload_days.c.owner == owner, s.upload_days.c.day == now_ms // DAY_MS)
                )
            ).scalar()
        return int(stored), int(today or 0)

    def open_jobs(self, submitter: str) -> int:
        with self.engine.connect() as conn:
            n = conn.execute(
                select(func.count())
                .select_from(s.jobs)
                .where(and_(s.jobs.c.submitter == submitter, s.jobs.c.state.in_(_LIVE)))
            ).scalar_one()
        return int(n)

    def submitter_may_read(self, submitter: str, sha256: str) -> bool:
        """The submitter uploaded the blob, or it is part of one of its jobs (an input shard, a
        task's output, the result, a training round's weights)."""
        if self.owns(submitter, sha256):
            return True
        j, t, r = s.jobs, s.tasks, s.training_rounds
        mine = select(j.c.job_id).where(j.c.submitter == submitter)
        with self.engine.connect() as conn:
            if conn.execute(
                select(j.c.job_id).where(and_(j.c.submitter == submitter, j.c.result_sha == sha256))
            ).first():
                return True
            in_task = or_(t.c.model_sha == sha256, t.c.input_sha == sha256, t.c.output_sha == sha256)
            if conn.execute(select(t.c.task_id).where(and_(t.c.job_id.in_(mine), in_task)).limit(1)).first():
                return True
            in_round = or_(r.c.weights_sha == sha256, r.c.momentum_sha == sha256)
            return (
                conn.execute(select(r.c.job_id).where(and_(r.c.job_id.in_(mine), in_round)).limit(1)).first()
                is not None
            )

    def node_may_read(self, node: str, sha256: str) -> bool:
        """The node holds a lease on a task that uses the blob: its model, its input, or a blob
        its settings name (a training round's global weights)."""
        t = s.tasks
        uses = or_(t.c.model_sha == sha256, t.c.input_sha == sha256, t.c.settings.contains(sha256))
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.c.task_id).where(and_(t.c.node == node, t.c.state == "leased", uses)).limit(1)
            ).first()
        return row is not None

    def live_references(self, now_ms: int, retention_ms: int) -> set[str]:
        """Every sha256 a job still needs: jobs not finished, or finished less than retention_ms ago
        (their results stay downloadable that long), and blobs uploaded within retention_ms."""
        since = now_ms - retention_ms
        with self.engine.connect() as conn:
            live = [
                str(r.job_id)
                for r in conn.execute(
                    select(s.jobs.c.job_id).where(or_(s.jobs.c.state.in_(_LIVE), s.jobs.c.updated_ms >= since))
                )
            ]
            found = {
                str(r.sha256)
                for r in conn.execute(select(s.blob_owners.c.sha256).where(s.blob_owners.c.created_ms >= since))
            }
            for table in s.TABLES:
                if "job_id" not in table.c:
                    continue
                for batch in _batches(live, 500):
                    for row in conn.execute(select(table).where(table.c.job_id.in_(batch))):
                        found.update(_hashes(row))
        return found

    def forget(self, sha256s: Iterable[str]) -> None:
        """Drop the ownership of blobs that were deleted."""
        hashes = list(sha256s)
        with self.engine.begin() as conn:
            for batch in _batches(hashes, 500):
                conn.execute(s.blob_owners.delete().where(s.blob_owners.c.sha256.in_(batch)))


def _hashes(row: object) -> Iterator[str]:
    """Every 64-hex-digit string in a row (blob hashes in columns, in JSON settings and specs)."""
    values: tuple[Any, ...] = tuple(row)  # type: ignore[arg-type]
    for value in values:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if isinstance(text, str) and len(text) >= 64:
            yield from _HEX64.findall(text.lower())


def _batches(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
