"""The blob store as services use it: receiving streamed bytes, finding the blobs a spec names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from tensorgrid.blobs import BlobStore, BlobWriter, write_behind
from tensorgrid.errors import BlobError, HashMismatch, SpecError
from tensorgrid.types import BlobRef


async def receive_into(writer: BlobWriter, chunks: AsyncIterator[bytes]) -> BlobRef:
    """Feed streamed bytes into a writer and commit; BlobError on oversize data or a hash mismatch.

    Hashing and disk writes run on a thread, one chunk behind the network (write_behind).
    """
    try:
        await write_behind(chunks, writer.write)
        return await asyncio.to_thread(writer.commit)
    finally:
        writer.abort()


class MemoryBudget:
    """Bytes the coordinator may hold in memory for peers' uploads at once, over all calls.

    take() reserves a call's declared size, or says no (the caller then streams to disk);
    give() returns it. One event loop: no lock needed."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def take(self, size: int) -> bool:
        if size < 0 or self.used + size > self.capacity:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used = max(0, self.used - size)


async def collect(chunks: AsyncIterator[bytes], size: int) -> bytes:
    """Join streamed bytes announced as `size` long; HashMismatch as soon as more arrive."""
    pieces: list[bytes] = []
    have = 0
    async for piece in chunks:
        have += len(piece)
        if have > size:
            raise HashMismatch(f"more output bytes than the {size} the receipt's header announced")
        pieces.append(piece)
    return b"".join(pieces)


async def drain(chunks: AsyncIterator[bytes], size: int) -> None:
    """Read and drop streamed bytes announced as `size` long; BlobError as soon as more arrive."""
    have = 0
    async for piece in chunks:
        have += len(piece)
        if have > size:
            raise BlobError(f"more bytes than the {size} announced")


def stored(blobs: BlobStore, ref: BlobRef, what: str) -> Path:
    """The local path of a blob the spec names; SpecError if it is missing or of another size."""
    try:
        have = blobs.ref(ref.sha256)
    except BlobError:
        raise SpecError(f"{what} blob {ref.sha256} is not on the coordinator: upload it first") from None
    if have.size != ref.size:
        raise SpecError(f"{what} blob {ref.sha256} has {have.size} bytes, the spec says {ref.size}")
    return blobs.path_for(ref.sha256)
