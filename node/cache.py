"""Content-addressed, hash-checked, size-bounded cache of blobs on the node's disk.

Layout: root/<first two hex chars>/<sha256>. Downloads go to root/ab/<sha256>.part next to
their destination (tensorgrid.blobs.download), so a broken download resumes where it stopped
and the final rename is atomic. A file under its sha256 name has always been verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import weakref
from pathlib import Path

from tensorgrid.blobs import check_sha256
from tensorgrid.blobs.download import AsyncFetch, BlobLike, download_async
from tensorgrid.errors import BlobError

__all__ = ["BlobCache", "BlobLike", "Fetch"]

log = logging.getLogger("tensorgrid.node.cache")

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
Fetch = AsyncFetch  # fetch(offset) streams the blob's bytes starting at offset


class BlobCache:
    """Blobs stored under their sha256, evicted least-recently-used beyond max_bytes."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        # One lock per hash, dropped when nobody holds or waits for it.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _final(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def path_for(self, sha: str) -> Path | None:
        """Path of a verified blob, or None; marks it recently used."""
        path = self._final(check_sha256(sha))
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    async def ensure(self, ref: BlobLike, fetch: Fetch) -> Path:
        """Return the blob's path, downloading and verifying it first if needed.

        Concurrent calls for one hash share a single download. A download interrupted by an
        error or cancellation leaves its partial file, and the next call resumes from it.
        Raises HashMismatch (and drops the partial) when size or hash do not match.
        """
        sha = check_sha256(ref.sha256)
        if ref.size < 0:
            raise BlobError(f"blob {sha[:12]} has a negative size {ref.size}")
        lock = self._locks.get(sha)
        if lock is None:
            lock = self._locks[sha] = asyncio.Lock()
        async with lock:
            path = self.path_for(sha)
            if path is None:
                final = self._final(sha)
                final.parent.mkdir(parents=True, exist_ok=True)
                path = await download_async(ref, final, fetch)
        await asyncio.to_thread(self._evict, keep=path)
        return path

    def _evict(self, keep: Path) -> None:
        """Delete least-recently-used blobs until the cache fits max_bytes (never `keep`)."""
        entries: list[tuple[float, int, Path]] = []
        total = 0
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for path in sub.iterdir():
                if not _SHA256_RE.fullmatch(path.name):
                    continue  # partial downloads belong to someone mid-fetch
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    entries.append((st.st_mtime, st.st_size, path))
                    total += st.st_size
        entries.sort()
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                total -= size
                log.info("evicted blob %s (%d bytes)", path.name[:12], size)
