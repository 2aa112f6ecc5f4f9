"""Blob retention and blob access over a real database and blob store, with a chosen clock."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert, update

from coordinator.db import schema as s
from coordinator.repositories.store import Store
from coordinator.services.retention import sweep
from tensorgrid.blobs import EMPTY_SHA256, BlobStore
from tensorgrid.types import BlobRef

DAY = 86_400_000
RETENTION = 7 * DAY
NOW = 1_800_000_000_000
ALICE = "0x" + "aa" * 20
BOB = "0x" + "bb" * 20


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    st = Store(db_url)
    yield st
    st.close()


def _blob(blobs: BlobStore, data: bytes, age_ms: int) -> BlobRef:
    ref = blobs.put_bytes(data)
    when = (NOW - age_ms) / 1000
    os.utime(blobs.path_for(ref.sha256), (when, when))
    return ref


def _job(store: Store, job_id: str, submitter: str, state: str, updated_ms: int, spec: dict, result: str = "") -> None:
    with store.engine.begin() as conn:
        conn.execute(
            insert(s.jobs).values(
                job_id=job_id,
                submitter=submitter,
                kind="inference",
                state=state,
                spec_json=json.dumps(spec).encode(),
                spec_hash="0" * 64,
                created_ms=updated_ms,
                updated_ms=updated_ms,
                tasks_total=1,
                result_sha=result or None,
            )
        )


def test_retention_deletes_old_unreferenced_blobs_and_keeps_the_rest(store: Store, tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    old_orphan = _blob(blobs, b"nobody needs me", 30 * DAY)
    young_orphan = _blob(blobs, b"just uploaded", DAY)
    live_model = _blob(blobs, b"model of a running job", 30 * DAY)
    recent_result = _blob(blobs, b"result of a job that ended yesterday", 30 * DAY)
    stale_result = _blob(blobs, b"result of a job that ended a month ago", 30 * DAY)
    weights = _blob(blobs, b"weights a task's settings name", 30 * DAY)
    renewed = _blob(blobs, b"re-uploaded by its owner yesterday", 30 * DAY)
    _job(store, "1" * 64, ALICE, "running", NOW - 30 * DAY, {"model": {"sha256": live_model.sha256}})
    _job(store, "2" * 64, ALICE, "succeeded", NOW - DAY, {}, result=recent_result.sha256)
    _job(store, "3" * 64, BOB, "succeeded", NOW - 30 * DAY, {}, result=stale_result.sha256)
    with store.engine.begin() as conn:
        conn.execute(
            insert(s.tasks).values(
                task_id="4" * 64,
                job_id="1" * 64,
                idx=0,
                state="pending",
                job_created_ms=NOW,
                kind="training",
                device="cpu",
                min_memory_bytes=0,
                input_sha=EMPTY_SHA256,
                input_size=0,
                rows=1,
                settings=json.dumps({"blobs": {"weights": {"sha256": weights.sha256, "size": weights.size}}}),
                memory_limit_bytes=1 << 30,
                time_limit_ms=1000,
                max_attempts=3,
            )
        )
    for ref in (old_orphan, stale_result):
        store.blob_access.record_upload(BOB, ref, ref.size, NOW - 30 * DAY)
    store.blob_access.record_upload(ALICE, renewed, 0, NOW - DAY)

    deleted = sweep(blobs, store.blob_access, NOW, RETENTION)

    assert sorted(deleted) == sorted([old_orphan.sha256, stale_result.sha256])
    for gone in (old_orphan, stale_result):
        assert not blobs.has(gone.sha256)
        assert not store.blob_access.owns(BOB, gone.sha256)  # the owner's quota is freed
    for kept in (young_orphan, live_model, recent_result, weights, renewed):
        assert blobs.has(kept.sha256)
    assert blobs.has(EMPTY_SHA256)
    assert store.blob_access.usage(BOB, NOW)[0] == 0
    # once the running job ends and the retention period passes, its blobs go too
    with store.engine.begin() as conn:
        conn.execute(update(s.jobs).where(s.jobs.c.job_id == "1" * 64).values(state="cancelled"))
    later = sweep(blobs, store.blob_access, NOW + RETENTION + 1, RETENTION)
    assert live_model.sha256 in later and weights.sha256 in later


def test_blob_access_per_submitter_and_per_lease(store: Store) -> None:
    repo = store.blob_access
    model = BlobRef("a" * 64, 10)
    shard = BlobRef("b" * 64, 5)
    result = BlobRef("c" * 64, 5)
    weights = "d" * 64
    repo.record_upload(ALICE, model, model.size, NOW)
    _job(store, "1" * 64, ALICE, "running", NOW, {}, result=result.sha256)
    with store.engine.begin() as conn:
        conn.execute(
            insert(s.tasks).values(
                task_id="4" * 64,
                job_id="1" * 64,
                idx=0,
                state="leased",
                node=BOB,
                job_created_ms=NOW,
                kind="inference",
                device="cpu",
                min_memory_bytes=0,
                model_sha=model.sha256,
                model_size=model.size,
                input_sha=shard.sha256,
                input_size=shard.size,
                rows=1,
                settings=json.dumps({"blobs": {"weights": {"sha256": weights, "size": 1}}}),
                memory_limit_bytes=1 << 30,
                time_limit_ms=1000,
                max_attempts=3,
            )
        )
    for sha in (model.sha256, shard.sha256, result.sha256):
        assert repo.submitter_may_read(ALICE, sha)
        assert not repo.submitter_may_read(BOB, sha)
    for sha in (model.sha256, shard.sha256, weights):
        assert repo.node_may_read(BOB, sha)  # the lease holder
        assert not repo.node_may_read(ALICE, sha)  # not the holder
    assert not repo.node_may_read(BOB, result.sha256)  # not part of its task
    with store.engine.begin() as conn:
        conn.execute(update(s.tasks).values(state="done"))
    assert not repo.node_may_read(BOB, shard.sha256)  # the lease is over
    assert repo.usage(ALICE, NOW) == (10, 10)
    assert repo.usage(ALICE, NOW + DAY) == (10, 0)  # a new day
