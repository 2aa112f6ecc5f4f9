"""The blob store as services use it: receiving streamed bytes, finding the blobs a spec names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from tensorgrid.blobs import BlobStore, BlobWriter, write_behind
from tensorgrid.errors import BlobError, SpecError
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


def stored(blobs: BlobStore, ref: BlobRef, what: str) -> Path:
    """The local path of a blob the spec names; SpecError if it is missing or of another size."""
    try:
        have = blobs.ref(ref.sha256)
    except BlobError:
        raise SpecError(f"{what} blob {ref.sha256} is not on the coordinator: upload it first") from None
    if have.size != ref.size:
        raise SpecError(f"{what} blob {ref.sha256} has {have.size} bytes, the spec says {ref.size}")
    return blobs.path_for(ref.sha256)
