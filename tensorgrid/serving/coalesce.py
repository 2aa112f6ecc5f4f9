"""One writer per Serve stream, merging what queued up while it was writing.

A grpc.aio stream write costs both ends a fixed amount of CPU whatever the message holds; under
load, requests (down) and replies and receipts (up) queue while the previous write is in flight.
Merging them into one message of repeated fields turns many small writes into a few larger ones,
without delaying anything: a message is written as soon as the stream is free.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

M = TypeVar("M", bound=Any)  # a ServeUp or ServeDown
MAX_MERGED_BYTES = 2 << 20  # payload bytes merged into one message, well under the gRPC message limit
_NOTHING = object()


async def coalesced(
    queue: asyncio.Queue[M | None],
    fields: tuple[str, ...],
    payload: Callable[[M], int],
    written: Callable[[M], None] | None = None,
) -> AsyncIterator[M]:
    """Messages from `queue` until None. A message that sets no `msg` oneof (it carries only the
    repeated `fields`) takes in the ones queued right behind it that do the same, up to
    MAX_MERGED_BYTES of payload; order is kept. written(msg) is called once the stream has
    taken msg (the next one is asked for only after its write completed)."""
    held: Any = _NOTHING
    while True:
        msg = await queue.get() if held is _NOTHING else held
        held = _NOTHING
        if msg is None:
            return
        if msg.WhichOneof("msg") is None:
            size = payload(msg)
            while not queue.empty() and size < MAX_MERGED_BYTES:
                nxt = queue.get_nowait()
                if nxt is None or nxt.WhichOneof("msg") is not None:
                    held = nxt
                    break
                size += payload(nxt)
                for name in fields:
                    getattr(msg, name).extend(getattr(nxt, name))
        yield msg
        if written is not None:
            written(msg)
