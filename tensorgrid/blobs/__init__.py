"""Content-addressed blobs: sha256-named files, written and read in chunks."""

from tensorgrid.blobs.download import PartialDownload, download, download_async
from tensorgrid.blobs.overlap import write_behind
from tensorgrid.blobs.store import (
    CHUNK_BYTES,
    EMPTY_SHA256,
    BlobStore,
    BlobWriter,
    check_sha256,
    file_sha256,
)

__all__ = [
    "CHUNK_BYTES",
    "EMPTY_SHA256",
    "BlobStore",
    "BlobWriter",
    "PartialDownload",
    "check_sha256",
    "download",
    "download_async",
    "file_sha256",
    "write_behind",
]
