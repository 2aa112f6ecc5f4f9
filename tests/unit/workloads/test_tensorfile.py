from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tensorgrid.errors import InvalidTensorFile, UnsafeFileError
from tensorgrid.workloads.tensorfile import (
    MAX_HEADER_BYTES,
    batch_rows,
    concat,
    load_tensors,
    read_header,
    save_tensors,
    split,
    write_shard,
)


def _sample() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return {
        "x": torch.randn(37, 5, 3, generator=gen),
        "ids": torch.arange(37, dtype=torch.int64),
        "mask": torch.rand(37, generator=gen) > 0.5,
        "half": torch.randn(37, 3, generator=gen).to(torch.float16),
        "bytes": torch.randint(0, 255, (37, 1), generator=gen, dtype=torch.uint8),
    }


def _raw(header: Any, data: bytes = b"", *, length: int | None = None) -> bytes:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _write(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "t.safetensors"
    path.write_bytes(content)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_save_load_round_trip(tmp_path: Path) -> None:
    tensors = _sample()
    save_tensors(tensors, tmp_path / "a.safetensors")
    loaded = load_tensors(tmp_path / "a.safetensors")
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert torch.equal(loaded[name], value)
    header = read_header(tmp_path / "a.safetensors")
    assert header.tensors["x"].shape == (37, 5, 3) and header.tensors["x"].dtype == "F32"
    assert batch_rows(header) == 37


def test_split_then_concat_restores_every_tensor(tmp_path: Path) -> None:
    tensors = _sample()
    save_tensors(tensors, tmp_path / "src.safetensors")
    shards = split(tmp_path / "src.safetensors", tmp_path / "shards", 10)
    assert [rows for _, rows in shards] == [10, 10, 10, 7]
    first = load_file(str(shards[0][0]))
    assert torch.equal(first["x"], tensors["x"][:10])
    concat([path for path, _ in shards], tmp_path / "joined.safetensors")
    joined = load_tensors(tmp_path / "joined.safetensors")
    for name, value in tensors.items():
        assert torch.equal(joined[name], value), name


def test_split_and_concat_are_deterministic(tmp_path: Path) -> None:
    save_tensors(_sample(), tmp_path / "src.safetensors")
    a = split(tmp_path / "src.safetensors", tmp_path / "a", 8)
    b = split(tmp_path / "src.safetensors", tmp_path / "b", 8)
    assert [_sha(p) for p, _ in a] == [_sha(p) for p, _ in b]
    concat([p for p, _ in a], tmp_path / "ja.safetensors")
    concat([p for p, _ in b], tmp_path / "jb.safetensors")
    assert _sha(tmp_path / "ja.safetensors") == _sha(tmp_path / "jb.safetensors")


def test_write_shard_rejects_bad_row_range(tmp_path: Path) -> None:
    save_tensors(_sample(), tmp_path / "src.safetensors")
    header = read_header(tmp_path / "src.safetensors")
    with pytest.raises(InvalidTensorFile, match="outside"):
        write_shard(tmp_path / "src.safetensors", header, 30, 40, tmp_path / "out.safetensors")


def test_batch_rows_errors(tmp_path: Path) -> None:
    save_tensors({"a": torch.zeros(3, 2), "b": torch.zeros(4), "s": torch.tensor(1.0)}, tmp_path / "f")
    header = read_header(tmp_path / "f")
    assert batch_rows(header, ["a"]) == 3
    with pytest.raises(InvalidTensorFile, match="disagree"):
        batch_rows(header, ["a", "b"])
    with pytest.raises(InvalidTensorFile, match="scalar"):
        batch_rows(header, ["s"])
    with pytest.raises(InvalidTensorFile, match="not in the file"):
        batch_rows(header, ["zzz"])


def test_concat_refuses_mismatched_parts(tmp_path: Path) -> None:
    save_tensors({"a": torch.zeros(3, 2)}, tmp_path / "p1")
    save_tensors({"b": torch.zeros(3, 2)}, tmp_path / "p2")
    save_tensors({"a": torch.zeros(3, 4)}, tmp_path / "p3")
    with pytest.raises(InvalidTensorFile, match="names"):
        concat([tmp_path / "p1", tmp_path / "p2"], tmp_path / "out")
    with pytest.raises(InvalidTensorFile, match="only dim 0"):
        concat([tmp_path / "p1", tmp_path / "p3"], tmp_path / "out")


def test_header_length_with_pickle_like_first_bytes_is_still_safetensors(tmp_path: Path) -> None:
    # A 640-byte header starts with 0x80 0x02, like a protocol-2 pickle; it must still load.
    entry = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    text = json.dumps(entry).encode()
    text += b" " * (0x280 - len(text))
    path = _write(tmp_path, _raw(text, struct.pack("<2f", 1.0, 2.0)))
    assert torch.equal(load_tensors(path)["x"], torch.tensor([1.0, 2.0]))


GOOD = {"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (b"\x01\x02\x03", InvalidTensorFile, "too short"),
        (_raw(GOOD, b"\x00" * 8), InvalidTensorFile, "end at byte|truncated"),
        (_raw(GOOD, b"\x00" * 20), InvalidTensorFile, "trailing"),
        (_raw(GOOD, length=MAX_HEADER_BYTES + 1), UnsafeFileError, "limit"),
        (_raw(GOOD, length=10_000), InvalidTensorFile, "truncated"),
        (_raw(b"[1, 2]"), InvalidTensorFile, "JSON object"),
        (_raw(b"{not json"), InvalidTensorFile, "not valid JSON"),
        (_raw(b'{"x": 1, "x": 2}'), InvalidTensorFile, "duplicate"),
        (
            _raw({"x": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16),
            InvalidTensorFile,
            "dtype",
        ),
        (
            _raw({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
            InvalidTensorFile,
            "non-negative",
        ),
        (
            _raw({"x": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4),
            InvalidTensorFile,
            "non-negative",
        ),
        (
            _raw({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16),
            InvalidTensorFile,
            "need 12",
        ),
        (
            _raw(
                {
                    "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    "y": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
                },
                b"\0" * 12,
            ),
            InvalidTensorFile,
            "gap",
        ),
        (
            _raw(
                {
                    "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
                },
                b"\0" * 8,
            ),
            InvalidTensorFile,
            "overlaps",
        ),
        (
            _raw({"x": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, b"\0" * 8),
            InvalidTensorFile,
            "end before",
        ),
        (_raw({"__metadata__": {"a": 1}}), InvalidTensorFile, "__metadata__"),
    ],
)
def test_hostile_headers_are_refused(tmp_path: Path, content: bytes, error: type[Exception], match: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(error, match=match):
        read_header(path)
    with pytest.raises(error):
        load_tensors(path)


@pytest.mark.parametrize("zipfile_format", [True, False])
def test_torch_save_files_are_refused_as_pickle(tmp_path: Path, zipfile_format: bool) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"x": torch.zeros(2)}, path, _use_new_zipfile_serialization=zipfile_format)
    with pytest.raises(UnsafeFileError, match="safetensors.torch.save_file"):
        read_header(path)
