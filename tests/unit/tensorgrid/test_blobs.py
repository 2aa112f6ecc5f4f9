"""The content-addressed blob store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tensorgrid.blobs import BlobStore, file_sha256
from tensorgrid.blobs.store import PARALLEL_HASH_BYTES
from tensorgrid.errors import BlobError, HashMismatch
from tensorgrid.types import BlobRef


def test_streamed_write_and_ranged_read(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = bytes(range(256)) * 10_000
    with store.writer(BlobRef(hashlib.sha256(data).hexdigest(), len(data))) as w:
        for i in range(0, len(data), 4096):
            w.write(data[i : i + 4096])
        ref = w.commit()
    assert store.has(ref.sha256) and store.ref(ref.sha256) == ref
    assert b"".join(store.read_chunks(ref.sha256, 1000, 777)) == data[1000:]
    assert file_sha256(store.path_for(ref.sha256)) == ref


def test_hash_mismatch_leaves_nothing_behind(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(HashMismatch), store.writer(BlobRef("00" * 32, 3)) as w:
        w.write(b"abc")
        w.commit()
    assert not store.has("00" * 32)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_oversize_and_bad_names_are_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_blob_bytes=10)
    with pytest.raises(BlobError, match="over the limit"):
        store.writer(BlobRef("00" * 32, 11))
    with pytest.raises(BlobError, match="more than"), store.writer() as w:
        w.write(b"x" * 11)
    with pytest.raises(BlobError, match="not a sha256"):
        store.path_for("../../etc/passwd")
    with pytest.raises(BlobError, match="unknown blob"):
        store.ref("11" * 32)


def test_hash_announced_after_the_bytes_began(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_blob_bytes=100)
    data = b"hello blob"
    ref = BlobRef(hashlib.sha256(data).hexdigest(), len(data))
    with store.writer(size=len(data)) as w:
        w.write(data[:4])
        assert not w.announced
        w.expect(ref)
        w.write(data[4:])
        assert w.commit() == ref
    assert store.has(ref.sha256)


def test_hash_announced_late_is_still_checked(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_blob_bytes=100)
    with pytest.raises(HashMismatch), store.writer(size=3) as w:
        w.write(b"abc")
        w.expect(BlobRef("00" * 32, 3))
        w.commit()
    assert not store.has("00" * 32)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_late_hash_may_not_change_the_size_or_come_twice(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_blob_bytes=100)
    with store.writer(size=3) as w, pytest.raises(BlobError, match="announced as 3 bytes"):
        w.expect(BlobRef("00" * 32, 4))
    with store.writer(BlobRef("00" * 32, 3)) as w, pytest.raises(BlobError, match="twice"):
        w.expect(BlobRef("11" * 32, 3))
    with store.writer() as w, pytest.raises(BlobError, match="over the limit"):
        w.expect(BlobRef("00" * 32, 101))
    with store.writer(size=3) as w, pytest.raises(BlobError, match="not a sha256"):
        w.expect(BlobRef("../x", 3))
    with pytest.raises(BlobError, match="more than"), store.writer(size=3) as w:
        w.write(b"abcd")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_big_writes_hashed_beside_the_copy_are_checked_in_order(tmp_path: Path) -> None:
    # Chunks from PARALLEL_HASH_BYTES up are hashed on the writer's thread while written; the
    # buffer is reused between writes, as a receiver may: every byte still counts, in order.
    store = BlobStore(tmp_path)
    parts = [bytes([i]) * (PARALLEL_HASH_BYTES + i) for i in range(3)] + [b"tail"]
    whole = b"".join(parts)
    buf = bytearray()
    with store.writer(BlobRef(hashlib.sha256(whole).hexdigest(), len(whole))) as w:
        for part in parts:
            buf[:] = part
            w.write(buf)
        ref = w.commit()
    assert store.path_for(ref.sha256).read_bytes() == whole
    with store.writer(BlobRef(hashlib.sha256(whole[::-1]).hexdigest(), len(whole))) as w:
        for part in parts:
            w.write(part)
        with pytest.raises(HashMismatch):
            w.commit()
    assert list((tmp_path / "tmp").iterdir()) == []
