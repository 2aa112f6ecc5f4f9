"""tensorgrid.blobs.download: the one resumable, hash-checked download (sync and asyncio)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tensorgrid.blobs import download, download_async
from tensorgrid.errors import BlobError, HashMismatch
from tensorgrid.types import BlobRef


def _ref(data: bytes) -> BlobRef:
    return BlobRef(hashlib.sha256(data).hexdigest(), len(data))


class Source:
    """Serves bytes in chunks from an offset, synchronously; records offsets; can drop after n chunks."""

    def __init__(self, data: bytes, chunk: int = 1000, fail_after: int | None = None) -> None:
        self.data, self.chunk, self.fail_after = data, chunk, fail_after
        self.offsets: list[int] = []

    def __call__(self, offset: int) -> Iterator[bytes]:
        self.offsets.append(offset)
        for n, start in enumerate(range(offset, len(self.data), self.chunk)):
            if self.fail_after is not None and n >= self.fail_after:
                raise ConnectionError("link dropped")
            yield self.data[start : start + self.chunk]


def _aio(source: Source):  # type: ignore[no-untyped-def]
    async def fetch(offset: int) -> AsyncIterator[bytes]:
        for piece in source(offset):
            await asyncio.sleep(0)
            yield piece

    return fetch


def test_download_checks_and_renames(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    seen: list[tuple[int, int]] = []
    dest = download(_ref(data), tmp_path / "blob", Source(data), lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == data and not (tmp_path / "blob.part").exists()
    assert seen[-1] == (10_000, 10_000)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_resume_after_an_interrupted_download(tmp_path: Path, flavour: str) -> None:
    data = os.urandom(10_000)
    dest = tmp_path / "blob"

    def run(source: Source) -> Path:
        if flavour == "sync":
            return download(_ref(data), dest, source)
        return asyncio.run(download_async(_ref(data), dest, _aio(source)))

    with pytest.raises(ConnectionError):
        run(Source(data, fail_after=4))
    assert (tmp_path / "blob.part").read_bytes() == data[:4000]
    source = Source(data)
    assert run(source).read_bytes() == data
    assert source.offsets == [4000]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_hash_mismatch_after_resume_drops_everything(tmp_path: Path, flavour: str) -> None:
    data = os.urandom(10_000)
    dest = tmp_path / "blob"
    (tmp_path / "blob.part").write_bytes(b"\0" * 3000)  # a partial that is not a prefix of the blob
    source = Source(data)
    with pytest.raises(HashMismatch):
        if flavour == "sync":
            download(_ref(data), dest, source)
        else:
            asyncio.run(download_async(_ref(data), dest, _aio(source)))
    assert source.offsets == [3000]
    assert not dest.exists() and not (tmp_path / "blob.part").exists()
    assert download(_ref(data), dest, Source(data)).read_bytes() == data  # the next try starts over


@pytest.mark.parametrize("served", [b"x" * 6000, b"x" * 4000, b"y" * 5000])
def test_too_much_too_little_or_wrong_bytes(tmp_path: Path, served: bytes) -> None:
    with pytest.raises(HashMismatch):
        download(_ref(b"x" * 5000), tmp_path / "blob", Source(served))
    assert list(tmp_path.iterdir()) == []


def test_a_source_sending_too_much_is_cut_off(tmp_path: Path) -> None:
    sent: list[int] = []

    def endless(offset: int) -> Iterator[bytes]:
        while True:
            sent.append(1)
            yield b"z" * 1000

    with pytest.raises(HashMismatch, match="more than"):
        download(_ref(b"z" * 5000), tmp_path / "blob", endless)
    assert len(sent) <= 8 and list(tmp_path.iterdir()) == []


def test_partial_longer_than_the_blob_starts_over(tmp_path: Path) -> None:
    data = os.urandom(2000)
    (tmp_path / "blob.part").write_bytes(os.urandom(3000))
    source = Source(data)
    assert download(_ref(data), tmp_path / "blob", source).read_bytes() == data
    assert source.offsets == [0]


def test_cancelled_download_keeps_its_partial(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    dest = tmp_path / "blob"

    async def cancel_midway() -> None:
        stalled = asyncio.Event()  # the download took 4 chunks and waits for the fifth

        async def slow(offset: int) -> AsyncIterator[bytes]:
            for start in range(offset, len(data), 1000):
                yield data[start : start + 1000]
                if start >= 3000:
                    stalled.set()
                    await asyncio.sleep(60)
                await asyncio.sleep(0.01)

        task = asyncio.ensure_future(download_async(_ref(data), dest, slow))
        await asyncio.wait_for(stalled.wait(), 30)  # not a fixed sleep: a loaded machine may be slower
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    assert (tmp_path / "blob.part").read_bytes() == data[:4000]
    source = Source(data)
    assert download(_ref(data), dest, source).read_bytes() == data and source.offsets == [4000]


@pytest.mark.parametrize("sha", ["../" * 21 + "etc", "A" * 64, "", "a" * 63])
def test_bad_hash_is_refused_before_touching_disk(tmp_path: Path, sha: str) -> None:
    with pytest.raises(BlobError):
        download(BlobRef(sha, 1), tmp_path / "blob", Source(b"x"))
    assert list(tmp_path.iterdir()) == []
