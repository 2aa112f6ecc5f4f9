"""Resumable, hash-checked downloads: the one implementation behind Client.download and the node's cache.

A download grows `<dest>.part` beside its destination. An interrupted download (an error, a
dropped stream, a cancelled task) keeps its partial file, and the next attempt hashes what is
there and asks the source for the rest from that offset. Only bytes whose size and sha256 match
the BlobRef are renamed to dest (atomically: same directory); anything else is deleted and
HashMismatch raised. A source that sends more than the announced size is cut off at once, so a
hostile peer cannot fill the disk.

Hashing and writing run on a worker thread one chunk behind the network (sha256 and file writes
release the GIL), so receiving the next chunk overlaps storing the last; at most two chunks are
held in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import BinaryIO, Protocol

from tensorgrid.blobs.overlap import write_behind, write_behind_blocking
from tensorgrid.blobs.store import CHUNK_BYTES, check_sha256
from tensorgrid.errors import BlobError, HashMismatch

__all__ = ["AsyncFetch", "BlobLike", "Fetch", "PartialDownload", "download", "download_async"]

log = logging.getLogger("tensorgrid.blobs")


class BlobLike(Protocol):
    """Anything naming a blob by content: tensorgrid.types.BlobRef fits."""

    @property
    def sha256(self) -> str: ...

    @property
    def size(self) -> int: ...


# fetch(offset) streams the blob's bytes starting at offset.
Fetch = Callable[[int], Iterable[bytes | bytearray]]
AsyncFetch = Callable[[int], AsyncIterator[bytes]]
Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def part_path(dest: Path) -> Path:
    """Where the partial download of dest lives."""
    return dest.with_name(dest.name + ".part")


class PartialDownload:
    """The bytes of one blob received so far, in a .part file; thread-safe against close()."""

    def __init__(self, ref: BlobLike, dest: Path) -> None:
        self.sha256 = check_sha256(ref.sha256)
        if ref.size < 0:
            raise BlobError(f"blob {self.sha256[:12]} has a negative size {ref.size}")
        self.size = ref.size
        self.dest = Path(dest)
        self.part = part_path(self.dest)
        self.received = 0
        self._digest = hashlib.sha256()
        self._file: BinaryIO | None = None
        # close() may run (on cancellation) while a worker thread is mid-write.
        self._lock = threading.Lock()

    def resume(self) -> int:
        """Open the partial file, hash what it holds and return the offset to fetch from.

        A partial longer than the blob cannot be a prefix of it: start over."""
        self._file = open(self.part, "ab")  # noqa: SIM115 -- closed by close()
        length = os.fstat(self._file.fileno()).st_size
        if length > self.size:
            self._file.truncate(0)
            length = 0
        if length:
            with open(self.part, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    self._digest.update(chunk)
            log.info("resuming blob %s at %d of %d bytes", self.sha256[:12], length, self.size)
        self.received = length
        return length

    def write(self, data: bytes) -> None:
        """Append and hash; HashMismatch (partial deleted) if the source sends more than the blob."""
        with self._lock:
            if self._file is None:
                raise BlobError(f"download of blob {self.sha256[:12]} is closed")
            self.received += len(data)
            if self.received > self.size:
                self._drop()
                raise HashMismatch(
                    f"blob {self.sha256[:12]}: received more than the {self.size} bytes expected; dropped it"
                )
            self._file.write(data)
            self._digest.update(data)

    def close(self) -> None:
        """Flush and close the partial file, keeping it for a later resume."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def finish(self) -> Path:
        """Check size and hash; rename to dest, or delete the partial and raise HashMismatch."""
        self.close()
        got = self._digest.hexdigest()
        if self.received != self.size or got != self.sha256:
            self.part.unlink(missing_ok=True)
            raise HashMismatch(
                f"blob {self.sha256[:12]}: received {self.received} bytes hashing to {got[:12]}, "
                f"expected {self.size} bytes hashing to {self.sha256[:12]}"
            )
        os.replace(self.part, self.dest)
        return self.dest

    def _drop(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.part.unlink(missing_ok=True)


def download(ref: BlobLike, dest: Path, fetch: Fetch, progress: Progress | None = None) -> Path:
    """Fetch a blob to dest (blocking), resuming dest.part; returns dest once its hash checks out.

    Errors from fetch propagate with the partial file kept for the next call."""
    dl = PartialDownload(ref, dest)
    offset = dl.resume()

    def shown(done: int) -> None:
        if progress:
            progress(min(offset + done, dl.size), dl.size)

    try:
        write_behind_blocking(fetch(offset), dl.write, shown)
    finally:
        dl.close()
    return dl.finish()


async def download_async(ref: BlobLike, dest: Path, fetch: AsyncFetch) -> Path:
    """download() for asyncio: the stream is read on the loop, hashing and writing run on a thread."""
    dl = PartialDownload(ref, dest)
    offset = await asyncio.to_thread(dl.resume)
    stream = fetch(offset)
    try:
        await write_behind(stream, dl.write)
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
        dl.close()  # waits for a write still running on its thread (a cancelled await does not stop it)
    return await asyncio.to_thread(dl.finish)
