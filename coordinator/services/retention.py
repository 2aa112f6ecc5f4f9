"""Blob retention: blobs no live job references, older than the operator's retention period,
are deleted from the store (and their ownership forgotten, which frees their owners' quota).

A blob is kept while any job that is queued or running references it, for the retention period
after its last job finished (so results stay downloadable), and for the retention period after
it was stored or last uploaded. The file's age guards blobs being written right now (a result
stored a moment before its task row names it).
"""

from __future__ import annotations

import asyncio
import logging

from coordinator.repositories.blobs import BlobAccessRepository
from coordinator.services.runtime import Runtime
from tensorgrid.blobs import BlobStore

log = logging.getLogger("tensorgrid.coordinator")


def sweep(blobs: BlobStore, repo: BlobAccessRepository, now_ms: int, retention_ms: int) -> list[str]:
    """Delete expired blobs now; returns their hashes. Blocking (database scan and file system)."""
    keep = repo.live_references(now_ms, retention_ms)
    cutoff_s = (now_ms - retention_ms) / 1000
    deleted = [
        sha for sha, _size, mtime in list(blobs.stored()) if mtime < cutoff_s and sha not in keep and blobs.delete(sha)
    ]
    if deleted:
        repo.forget(deleted)
    return deleted


async def retention_loop(
    rt: Runtime, blobs: BlobStore, repo: BlobAccessRepository, retention_ms: int, interval_s: float
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            deleted = await rt.db_bulk(sweep, blobs, repo, rt.now_ms(), retention_ms)
        except Exception:  # a failed sweep is retried next interval; serving goes on
            log.exception("blob retention sweep failed")
            continue
        if deleted:
            log.info("retention: deleted %d unreferenced blobs older than %.1f h", len(deleted), retention_ms / 3.6e6)
