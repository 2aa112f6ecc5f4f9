"""Content-addressed blobs: sha256-named files, written and read in chunks."""

from tensorgrid.blobs.store import (
    CHUNK_BYTES,
    EMPTY_SHA256,
    BlobStore,
    BlobWriter,
    check_sha256,
    file_sha256,
)

__all__ = ["CHUNK_BYTES", "EMPTY_SHA256", "BlobStore", "BlobWriter", "check_sha256", "file_sha256"]
