"""The serving worker's pipe protocol: length-prefixed binary frames, cheap per micro-batch.

    frame = u32 big-endian H ‖ H bytes of header (a UTF-8 JSON object) ‖ payload_0 ‖ … ‖ payload_n-1

The header lists the payloads' byte lengths under "sizes" (absent or [] = none), so the
tensors of a batch travel as raw bytes, never through JSON or base64. Both ends use the same
codec: the child reads its pipe with blocking reads, the agent with an asyncio StreamReader.
Nothing here imports torch (the agent process never does).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["FrameError", "MAX_HEADER_BYTES", "MAX_PAYLOAD_BYTES", "encode", "read_frame", "read_frame_async"]

MAX_HEADER_BYTES = 8 << 20  # a batch's results: up to 1024 requests with error messages
MAX_PAYLOAD_BYTES = 4 << 30  # a frame's payloads together (max_batch × max_request_bytes, with room)

Frame = tuple[dict[str, Any], list[bytes]]


class FrameError(ValueError):
    """A frame that does not follow the protocol (the other end is broken: restart it)."""


def encode(header: dict[str, Any], payloads: Sequence[bytes] = ()) -> bytes:
    """One frame's bytes; header["sizes"] is set from the payloads."""
    if payloads:
        header = {**header, "sizes": [len(p) for p in payloads]}
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((len(head).to_bytes(4, "big"), head, *payloads))


def _header(raw: bytes) -> tuple[dict[str, Any], list[int]]:
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise FrameError(f"a frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("a frame header must be a JSON object")
    sizes = header.get("sizes") or []
    if not isinstance(sizes, list) or not all(isinstance(n, int) and n >= 0 for n in sizes):
        raise FrameError("a frame header's sizes must be a list of byte counts")
    if sum(sizes) > MAX_PAYLOAD_BYTES:
        raise FrameError(f"a frame's payloads of {sum(sizes)} bytes exceed {MAX_PAYLOAD_BYTES}")
    return header, sizes


def _length(prefix: bytes) -> int:
    n = int.from_bytes(prefix, "big")
    if n > MAX_HEADER_BYTES:
        raise FrameError(f"a frame header of {n} bytes exceeds {MAX_HEADER_BYTES}")
    return n


def _read_exactly(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        raise FrameError(f"the pipe closed inside a frame ({len(data or b'')} of {n} bytes)")
    return data


def read_frame(stream: IO[bytes]) -> Frame | None:
    """The next frame from a blocking binary stream; None at a clean end of stream."""
    prefix = stream.read(4)
    if not prefix:
        return None
    if len(prefix) != 4:
        raise FrameError("the pipe closed inside a frame's length")
    header, sizes = _header(_read_exactly(stream, _length(prefix)))
    return header, [_read_exactly(stream, n) if n else b"" for n in sizes]


async def read_frame_async(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame from an asyncio stream; None at a clean end of stream."""
    try:
        prefix = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError("the pipe closed inside a frame's length") from None
    try:
        header, sizes = _header(await reader.readexactly(_length(prefix)))
        if not sizes:
            return header, []
        # One read for all payloads, then cut: fewer awaits per frame.
        blob = await reader.readexactly(sum(sizes))
    except asyncio.IncompleteReadError as exc:
        raise FrameError(f"the pipe closed inside a frame ({len(exc.partial)} of {exc.expected} bytes)") from None
    payloads, at = [], 0
    for n in sizes:
        payloads.append(blob[at : at + n])
        at += n
    return header, payloads
