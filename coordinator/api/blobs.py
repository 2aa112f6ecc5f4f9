"""Streaming blobs out of the store over gRPC, shared by both services (in: services.blobs)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from coordinator.services.blobs import receive_into
from tensorgrid.blobs import CHUNK_BYTES, BlobStore, check_sha256
from tensorgrid.errors import BlobError
from tensorgrid.types import BlobRef
from tensorgrid.v1 import common_pb2, submit_pb2


class _AlreadyStored(Exception):
    """The hash announced mid-upload names a blob the store already has: stop receiving."""


async def stream_blob(
    blobs: BlobStore, request: common_pb2.FetchBlobRequest, context: grpc.aio.ServicerContext
) -> AsyncIterator[common_pb2.BlobChunk]:
    """Yield a stored blob from request.offset in 1 MiB chunks; the first carries the total size."""
    try:
        ref = blobs.ref(request.sha256)
        chunks = blobs.read_chunks(request.sha256, request.offset, CHUNK_BYTES)
    except BlobError as e:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        return
    if request.offset > ref.size:  # read_chunks says so only once iterated: say it here, as the caller's mistake
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"offset {request.offset} is past the end of blob {ref.sha256} ({ref.size} bytes)",
        )
    first = True
    for data in chunks:
        yield common_pb2.BlobChunk(data=data, total_size=ref.size if first else 0)
        first = False
    if first:  # empty blob, or offset at the end: still say how big it is
        yield common_pb2.BlobChunk(data=b"", total_size=ref.size)


async def receive_upload(
    blobs: BlobStore,
    messages: AsyncIterator[submit_pb2.UploadChunk],
    admit: Callable[[int], Awaitable[None]],
    owned: Callable[[str], Awaitable[bool]],
) -> tuple[BlobRef, int]:
    """UploadBlob: a header, then the bytes. The header gives the size and, if the sender knows it,
    the sha256; a sender may instead announce the sha256 in one later header (hashing while it
    sends). Bytes are committed only once they match an announced hash. admit(size) raises if the
    sender may not store that much. A blob the sender already owns ends the upload as soon as its
    hash is known; anyone else must send the bytes (knowing a hash is no proof of having the blob).
    Returns the blob and the bytes received.
    """
    first = await anext(aiter(messages), None)
    if first is None or first.WhichOneof("part") != "header":
        raise BlobError("UploadBlob must start with a header giving the size (and the sha256, now or later)")
    size = first.header.size
    expected = BlobRef(check_sha256(first.header.sha256), size) if first.header.sha256 else None
    if expected is not None and _stored(blobs, expected) and await owned(expected.sha256):
        return expected, 0  # already the sender's: it may stop sending
    refused: Exception | None = None
    try:
        await admit(size)
    except Exception as e:
        if expected is not None:
            raise
        refused = e  # unless the hash, when it comes, names a blob the sender already has
    writer = blobs.writer(expected, size=size)
    received = 0

    async def data() -> AsyncIterator[bytes]:
        nonlocal expected, received
        async for chunk in messages:
            if chunk.WhichOneof("part") == "data":
                if refused is None:  # a refused upload's bytes are read and dropped until its hash
                    received += len(chunk.data)
                    yield chunk.data
                continue
            if expected is not None:
                raise BlobError("a second header in one upload")
            expected = BlobRef(check_sha256(chunk.header.sha256), chunk.header.size)
            if _stored(blobs, expected) and expected.size == size and await owned(expected.sha256):
                raise _AlreadyStored
            if refused is not None:
                raise refused
            writer.expect(expected)
        if refused is not None:
            raise refused
        if expected is None:
            raise BlobError("the upload ended without announcing the blob's sha256")

    try:
        return await receive_into(writer, data()), received
    except _AlreadyStored:
        assert expected is not None
        return expected, received


def _stored(blobs: BlobStore, ref: BlobRef) -> bool:
    return blobs.has(ref.sha256) and blobs.ref(ref.sha256).size == ref.size
