"""Content-addressed, hash-checked, size-bounded cache of blobs on the node's disk.

Layout: root/<first two hex chars>/<sha256>. Downloads go to root/ab/<sha256>.part next to
their destination, so a broken download resumes where it stopped and the final rename is
atomic. A file under its sha256 name has always been verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

from tensorgrid.errors import BlobError, HashMismatch

__all__ = ["BlobCache", "BlobLike", "Fetch"]

log = logging.getLogger("tensorgrid.node.cache")

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_PART = ".part"
_HASH_CHUNK = 1024 * 1024


class BlobLike(Protocol):
    """Anything naming a blob by content: tensorgrid.types.BlobRef fits."""

    @property
    def sha256(self) -> str: ...

    @property
    def size(self) -> int: ...


# fetch(offset) streams the blob's bytes starting at offset.
Fetch = Callable[[int], AsyncIterator[bytes]]


def _check_sha(sha: str) -> str:
    # The hash becomes a path: anything but 64 lowercase hex could escape the cache root.
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
        raise BlobError(f"invalid blob hash {sha!r}: expected 64 lowercase hex characters")
    return sha


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
        path = self._final(_check_sha(sha))
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
        sha = _check_sha(ref.sha256)
        if ref.size < 0:
            raise BlobError(f"blob {sha[:12]} has a negative size {ref.size}")
        lock = self._locks.get(sha)
        if lock is None:
            lock = self._locks[sha] = asyncio.Lock()
        async with lock:
            path = self.path_for(sha)
            if path is None:
                path = await self._download(sha, ref.size, fetch)
        await asyncio.to_thread(self._evict, keep=path)
        return path

    async def _download(self, sha: str, size: int, fetch: Fetch) -> Path:
        final = self._final(sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(sha + _PART)
        digest, offset = await asyncio.to_thread(_hash_partial, part, size)
        if offset:
            log.info("resuming blob %s at %d of %d bytes", sha[:12], offset, size)
        stream = fetch(offset)
        try:
            # Chunks are small (<= 1 MiB on the wire), so plain writes do not stall the loop.
            with open(part, "ab") as out:
                async for chunk in stream:
                    offset += len(chunk)
                    if offset > size:
                        break  # never store more than promised: a hostile peer could fill the disk
                    out.write(chunk)
                    digest.update(chunk)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if offset != size or digest.hexdigest() != sha:
            part.unlink(missing_ok=True)
            got = f"more than {size}" if offset > size else str(offset)
            raise HashMismatch(
                f"blob {sha[:12]}: received {got} bytes hashing to {digest.hexdigest()[:12]}, "
                f"expected {size} bytes hashing to {sha[:12]}"
            )
        os.replace(part, final)
        return final

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


def _hash_partial(part: Path, size: int) -> tuple[hashlib._Hash, int]:
    """Hash an existing partial download; start over if it is longer than the blob."""
    digest = hashlib.sha256()
    try:
        with open(part, "rb") as f:
            length = os.fstat(f.fileno()).st_size
            if length > size:
                raise FileNotFoundError
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        part.unlink(missing_ok=True)
        return hashlib.sha256(), 0
    return digest, length
