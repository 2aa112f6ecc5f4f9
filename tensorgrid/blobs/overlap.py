"""Receiving overlapped with writing: the one loop every streamed blob goes through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor


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


def write_behind_blocking(
    chunks: Iterable[bytes | bytearray],
    write: Callable[[bytes], object],
    progress: Callable[[int], None] | None = None,
) -> None:
    """write_behind for blocking code: each chunk is written on a worker thread while the next
    is received on this one. progress(n) after each chunk is received (n: bytes so far). Raises
    the first error of the source or of a write, and leaves no write running."""
    pending: Future[object] | None = None
    done = 0
    with ThreadPoolExecutor(1, thread_name_prefix="blob-write") as pool:
        try:
            for data in chunks:
                if pending is not None:
                    pending.result()
                pending = pool.submit(write, data)  # type: ignore[arg-type]
                done += len(data)
                if progress:
                    progress(done)
            if pending is not None:
                pending.result()
                pending = None
        finally:
            if pending is not None:
                pending.exception()  # wait for the last write; its error, if any, is already raised
