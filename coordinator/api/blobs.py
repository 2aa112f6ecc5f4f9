"""Streaming blobs out of the store over gRPC, shared by both services (in: services.blobs)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from tensorgrid.blobs import CHUNK_BYTES, BlobStore
from tensorgrid.errors import BlobError
from tensorgrid.v1 import common_pb2


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
    first = True
    for data in chunks:
        yield common_pb2.BlobChunk(data=data, total_size=ref.size if first else 0)
        first = False
    if first:  # empty blob, or offset at the end: still say how big it is
        yield common_pb2.BlobChunk(data=b"", total_size=ref.size)
