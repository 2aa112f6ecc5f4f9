"""BlobCache: verification, resume, shared downloads, LRU eviction, hostile hashes."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.cache import BlobCache
from tensorgrid.errors import BlobError, HashMismatch
from tensorgrid.types import BlobRef


def _ref(data: bytes) -> BlobRef:
    return BlobRef(hashlib.sha256(data).hexdigest(), len(data))


class Source:
    """Serves bytes in chunks from an offset; records every call; can fail after n chunks."""

    def __init__(self, data: bytes, chunk: int = 1000, fail_after: int | None = None) -> None:
        self.data, self.chunk, self.fail_after = data, chunk, fail_after
        self.offsets: list[int] = []

    async def __call__(self, offset: int) -> AsyncIterator[bytes]:
        self.offsets.append(offset)
        for n, start in enumerate(range(offset, len(self.data), self.chunk)):
            if self.fail_after is not None and n >= self.fail_after:
                raise ConnectionError("link dropped")
            await asyncio.sleep(0)
            yield self.data[start : start + self.chunk]


def test_download_verify_and_hit(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, max_bytes=10**6)
    data = os.urandom(5000)
    source = Source(data)
    path = asyncio.run(cache.ensure(_ref(data), source))
    assert path.read_bytes() == data and path.parent.name == path.name[:2]
    assert cache.path_for(_ref(data).sha256) == path
    assert asyncio.run(cache.ensure(_ref(data), source)) == path
    assert source.offsets == [0]  # the second ensure was a cache hit


@pytest.mark.parametrize("served", [b"y" * 5000, b"x" * 4000, b"x" * 6000])
def test_mismatch_raises_and_drops_partial(tmp_path: Path, served: bytes) -> None:
    cache = BlobCache(tmp_path, max_bytes=10**6)
    ref = _ref(b"x" * 5000)
    with pytest.raises(HashMismatch):
        asyncio.run(cache.ensure(ref, Source(served)))
    assert cache.path_for(ref.sha256) is None
    assert not list(tmp_path.rglob("*.part"))


def test_resume_after_broken_download(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, max_bytes=10**6)
    data = os.urandom(10_000)
    with pytest.raises(ConnectionError):
        asyncio.run(cache.ensure(_ref(data), Source(data, fail_after=4)))
    source = Source(data)
    path = asyncio.run(cache.ensure(_ref(data), source))
    assert source.offsets == [4000]
    assert path.read_bytes() == data


def test_concurrent_ensure_shares_one_download(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, max_bytes=10**6)
    data = os.urandom(50_000)
    source = Source(data, chunk=100)

    async def both() -> list[Path]:
        return list(await asyncio.gather(*(cache.ensure(_ref(data), source) for _ in range(5))))

    paths = asyncio.run(both())
    assert len(set(paths)) == 1 and source.offsets == [0]


def test_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, max_bytes=2500)
    blobs = [os.urandom(1000) for _ in range(3)]
    refs = [_ref(b) for b in blobs]

    async def fill() -> None:
        for i, (ref, blob) in enumerate(zip(refs[:2], blobs[:2], strict=True)):
            path = await cache.ensure(ref, Source(blob))
            os.utime(path, (1000 + i, 1000 + i))  # deterministic ages, not clock resolution
        cache.path_for(refs[0].sha256)  # touch the older one: now blob 1 is least recent
        await cache.ensure(refs[2], Source(blobs[2]))

    asyncio.run(fill())
    assert cache.path_for(refs[1].sha256) is None
    assert cache.path_for(refs[0].sha256) is not None and cache.path_for(refs[2].sha256) is not None


def test_just_fetched_blob_is_kept_even_if_too_big(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, max_bytes=100)
    data = os.urandom(1000)
    path = asyncio.run(cache.ensure(_ref(data), Source(data)))
    assert path.exists()


@pytest.mark.parametrize(
    "sha", ["../" * 21 + "etc", "A" * 64, "a" * 63, "g" * 64, "a" * 64 + "/", "", "../../" + "a" * 58]
)
def test_bad_hash_rejected(tmp_path: Path, sha: str) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=10**6)
    with pytest.raises(BlobError):
        cache.path_for(sha)
    with pytest.raises(BlobError):
        asyncio.run(cache.ensure(BlobRef(sha, 1), Source(b"x")))
    assert not (tmp_path / "etc").exists()
