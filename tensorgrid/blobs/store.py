"""A content-addressed blob store on local disk.

Blobs live at root/ab/<sha256>. Writers stream into a temp file in the same directory,
hash as they go and rename into place only when size and hash check out, so a crash
never leaves a half-written blob under a real name and a blob is never held in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from tensorgrid.errors import BlobError, HashMismatch
from tensorgrid.types import BlobRef

CHUNK_BYTES = 1 << 20
# A write this big is hashed on a thread of the writer's own while it is copied to the file: both
# release the GIL, and on the coordinator's upload path (receive, then hash and write one chunk
# behind) copying into the page cache cost as much as sha256 (perf, benchmarks.blobs).
PARALLEL_HASH_BYTES = 256 << 10
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_SHA_RE = re.compile(r"[0-9a-f]{64}")


def check_sha256(sha: str) -> str:
    """Return sha if it is 64 lowercase hex characters, else raise BlobError."""
    if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
        raise BlobError(f"not a sha256 hex digest: {sha!r:.80}")
    return sha


def file_sha256(path: Path) -> BlobRef:
    """Hash a file in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
            size += len(chunk)
    return BlobRef(h.hexdigest(), size)


class BlobWriter:
    """Streams bytes into the store; commit() checks them and makes the blob visible."""

    def __init__(self, store: BlobStore, expected: BlobRef | None, max_bytes: int, size: int | None = None) -> None:
        """expected: the blob's hash and size if known up front; else size alone (or nothing), and
        expect() may announce the hash later, while bytes stream in."""
        self._store = store
        self._max = max_bytes
        self._sha = expected.sha256 if expected is not None else None
        self._size = expected.size if expected is not None else size
        if self._size is not None and self._size > max_bytes:
            raise BlobError(f"blob of {self._size} bytes is over the limit of {max_bytes} bytes")
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="up-")
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._hash = hashlib.sha256()
        self._hasher: ThreadPoolExecutor | None = None
        self.size = 0
        self._done = False

    @property
    def announced(self) -> bool:
        """Whether the blob's sha256 is known, so commit() will check it."""
        return self._sha is not None

    def expect(self, ref: BlobRef) -> None:
        """Announce the blob's hash after its bytes began to arrive; the size must not change."""
        if self._sha is not None:
            raise BlobError("the blob's sha256 was announced twice")
        if self._size is not None and ref.size != self._size:
            raise BlobError(f"the blob was announced as {self._size} bytes, then as {ref.size}")
        if ref.size > self._max or ref.size < self.size:
            raise BlobError(f"blob of {ref.size} bytes is over the limit or shorter than the bytes received")
        self._sha, self._size = check_sha256(ref.sha256), ref.size

    def write(self, data: bytes) -> None:
        self.size += len(data)
        limit = self._size if self._size is not None else self._max
        if self.size > limit:
            self.abort()
            raise BlobError(f"received more than the {limit} bytes announced for this blob")
        if len(data) < PARALLEL_HASH_BYTES:
            self._hash.update(data)
            self._file.write(data)
            return
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="blob-hash")
        hashed = self._hasher.submit(self._hash.update, data)
        try:
            self._file.write(data)
        finally:
            hashed.result()  # before returning: the caller may reuse `data`, and the next chunk hashes after it

    def _close(self) -> None:
        self._file.close()
        if self._hasher is not None:
            self._hasher.shutdown()  # idle: every write waited for its hash

    def commit(self) -> BlobRef:
        """Check size and hash, then move the blob into place. Raises HashMismatch."""
        self._close()
        ref = BlobRef(self._hash.hexdigest(), self.size)
        if (self._sha is not None and self._sha != ref.sha256) or (self._size is not None and self._size != ref.size):
            self.abort()
            raise HashMismatch(
                f"blob bytes hash to {ref.sha256} ({ref.size} bytes), "
                f"but {self._sha} ({self._size} bytes) was announced"
            )
        dest = self._store.path_for(ref.sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, dest)
        self._done = True
        return ref

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class BlobStore:
    """Blobs on disk under root, named by sha256."""

    def __init__(self, root: Path, max_blob_bytes: int = 1 << 40) -> None:
        self.root = Path(root)
        self._root_str = str(self.root)
        self.max_blob_bytes = max_blob_bytes
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        if not self.has(EMPTY_SHA256):
            with self.writer() as w:
                w.commit()

    def path_for(self, sha: str) -> Path:
        check_sha256(sha)
        return self.root / sha[:2] / sha

    def has(self, sha: str) -> bool:
        # On strings, not Paths: the coordinator asks once per small result it accepts.
        return os.path.isfile(os.path.join(self._root_str, check_sha256(sha)[:2], sha))

    def ref(self, sha: str) -> BlobRef:
        """The BlobRef of a stored blob; BlobError if it is not here."""
        path = self.path_for(sha)
        try:
            return BlobRef(sha, path.stat().st_size)
        except FileNotFoundError:
            raise BlobError(f"unknown blob {sha}: upload it first") from None

    def writer(self, expected: BlobRef | None = None, size: int | None = None) -> BlobWriter:
        """A writer for a blob of known hash and size (expected), or of known size whose hash
        will be announced with BlobWriter.expect(), or of nothing known (named by its bytes)."""
        return BlobWriter(self, expected, self.max_blob_bytes, size)

    def put_file(self, path: Path) -> BlobRef:
        """Copy a local file into the store."""
        with self.writer() as w, open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                w.write(chunk)
            return w.commit()

    def put_bytes(self, data: bytes) -> BlobRef:
        with self.writer() as w:
            w.write(data)
            return w.commit()

    def read_chunks(self, sha: str, offset: int = 0, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Yield the blob from offset in chunks; BlobError if unknown or offset past the end."""
        size = self.ref(sha).size
        if offset < 0 or offset > size:
            raise BlobError(f"offset {offset} is outside blob {sha} of {size} bytes")
        with open(self.path_for(sha), "rb") as f:
            f.seek(offset)
            while chunk := f.read(chunk_bytes):
                yield chunk

    def stored(self) -> Iterator[tuple[str, int, float]]:
        """(sha256, size, mtime in seconds) of every stored blob, in no particular order."""
        for sub in self.root.iterdir():
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for path in sub.iterdir():
                if _SHA_RE.fullmatch(path.name):
                    try:
                        st = path.stat()
                    except FileNotFoundError:
                        continue
                    yield path.name, st.st_size, st.st_mtime

    def delete(self, sha: str) -> bool:
        """Remove a blob (never the empty one, which the store keeps); False if it was not there."""
        if sha == EMPTY_SHA256:
            return False
        try:
            self.path_for(sha).unlink()
        except FileNotFoundError:
            return False
        return True

    def temp_path(self, prefix: str = "work-") -> Path:
        """A fresh path inside the store's temp dir (same filesystem, so moves are atomic)."""
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix=prefix)
        os.close(fd)
        return Path(name)
