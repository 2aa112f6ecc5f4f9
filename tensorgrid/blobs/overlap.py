"""Receiving overlapped with writing: the one loop every streamed blob goes through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable


async def write_behind(chunks: AsyncIterable[bytes], write: Callable[[bytes], object]) -> None:
    """Hand each chunk to the blocking `write` (hash and write to disk) on a thread, one chunk
    behind the stream, so receiving the next chunk overlaps writing the last. Returns once every
    write is done; raises the first error of the stream or of a write, and leaves no write running."""
    pending: asyncio.Future[object] | None = None
    try:
        async for data in chunks:
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(asyncio.to_thread(write, data))
        if pending is not None:
            await pending
            pending = None
    finally:
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)
