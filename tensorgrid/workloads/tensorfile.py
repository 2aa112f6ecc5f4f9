"""Streaming safetensors handling: strict header validation, row sharding and concatenation.

Sharding and concatenation never hold a whole file in memory: they copy byte ranges in
chunks of at most COPY_CHUNK_BYTES. Files written here are deterministic (sorted header
keys, fixed tensor order), so the same input always yields the same bytes and hashes.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tensorgrid.errors import InvalidTensorFile, UnsafeFileError

if TYPE_CHECKING:
    import torch

__all__ = [
    "COPY_CHUNK_BYTES",
    "DTYPE_SIZES",
    "MAX_HEADER_BYTES",
    "Header",
    "TensorInfo",
    "batch_rows",
    "concat",
    "gather_rows",
    "header_of_bytes",
    "load_tensors",
    "read_header",
    "save_tensors",
    "shared_rows",
    "split",
    "write_shard",
]

MAX_HEADER_BYTES = 16 * 1024 * 1024
COPY_CHUNK_BYTES = 1024 * 1024

# Bytes per element of every dtype safetensors defines that torch 2.13 can load.
DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
    "C64": 8,
}  # fmt: skip

_SAVE_HINT = "save tensors with safetensors.torch.save_file"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file; begin/end are absolute byte offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def row_bytes(self) -> int:
        """Bytes of one dim-0 row (the whole tensor for a scalar)."""
        return math.prod(self.shape[1:]) * DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class Header:
    """The parsed header of a safetensors file; data_start is where tensor bytes begin."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def read_header(path: str | os.PathLike[str]) -> Header:
    """Read and strictly validate the header of a safetensors file.

    Raises UnsafeFileError for pickle/zip files and oversize headers, InvalidTensorFile for
    anything else that is not well-formed safetensors.
    """
    path = Path(path)
    file_size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(9)
        header_len = _header_length(prefix, file_size, path.name)
        f.seek(8)
        raw = f.read(header_len)
    return _parse_header(raw, file_size, path.name)


def header_of_bytes(data: bytes, name: str = "request") -> Header:
    """read_header for safetensors bytes held in memory (a request or an answer); `name` is
    what the errors call them."""
    header_len = _header_length(data[:9], len(data), name)
    return _parse_header(data[8 : 8 + header_len], len(data), name)


def _header_length(prefix: bytes, file_size: int, name: str) -> int:
    _refuse_pickle(prefix, name)
    if len(prefix) < 8:
        raise InvalidTensorFile(f"{name}: {file_size} bytes is too short to be safetensors")
    (header_len,) = struct.unpack("<Q", prefix[:8])
    if header_len > MAX_HEADER_BYTES:
        raise UnsafeFileError(f"{name}: header of {header_len} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + header_len > file_size:
        raise InvalidTensorFile(f"{name}: truncated (header claims {header_len} bytes)")
    return int(header_len)


def _parse_header(raw: bytes, file_size: int, name: str) -> Header:
    data_start = 8 + len(raw)
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidTensorFile(f"{name}: header is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise InvalidTensorFile(f"{name}: header must be a JSON object")
    metadata = _parse_metadata(obj.pop("__metadata__", {}), name)
    tensors = {key: _parse_entry(key, entry, data_start, name) for key, entry in obj.items()}
    _check_layout(tensors, data_start, file_size, name)
    return Header(tensors=tensors, metadata=metadata, data_start=data_start)


def _refuse_pickle(prefix: bytes, name: str) -> None:
    is_zip = prefix.startswith(b"PK\x03\x04")
    # A safetensors header length can also start with 0x80 0x0N; a real one has '{' at 8.
    is_pickle = len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5 and prefix[8:9] != b"{"
    if is_zip or is_pickle:
        raise UnsafeFileError(
            f"{name} looks like a torch.save/pickle file; TensorGrid only accepts safetensors "
            f"(never unpickles): {_SAVE_HINT}"
        )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_metadata(raw: object, name: str) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise InvalidTensorFile(f"{name}: __metadata__ must map strings to strings")
    return dict(raw)


def _parse_entry(name: str, entry: object, data_start: int, file: str) -> TensorInfo:
    where = f"{file}: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise InvalidTensorFile(f"{where} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise InvalidTensorFile(f"{where} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise InvalidTensorFile(f"{where}: shape must be a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise InvalidTensorFile(f"{where}: data_offsets must be two non-negative integers")
    begin, end = offsets
    if end < begin:
        raise InvalidTensorFile(f"{where}: data_offsets end before they begin")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != expected:
        raise InvalidTensorFile(
            f"{where} holds {end - begin} bytes but dtype {dtype} and shape {shape} need {expected}"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(tensors: dict[str, TensorInfo], data_start: int, file_size: int, name: str) -> None:
    """Tensor byte ranges must tile the data section exactly: no overlap, gap or tail."""
    cursor = data_start
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin != cursor:
            problem = "overlaps another tensor" if info.begin < cursor else "leaves a gap before it"
            raise InvalidTensorFile(f"{name}: tensor {info.name!r} {problem}")
        cursor = info.end
    if cursor != file_size:
        raise InvalidTensorFile(
            f"{name}: tensors end at byte {cursor} but the file has {file_size} (truncated or trailing bytes)"
        )


def batch_rows(header: Header, names: list[str] | None = None) -> int:
    """The shared dim-0 size of the named tensors (all tensors when names is None)."""
    return shared_rows({name: tuple(info.shape) for name, info in header.tensors.items()}, names)


def shared_rows(shapes: Mapping[str, Sequence[int]], names: list[str] | None = None) -> int:
    """batch_rows of tensors known by their shapes (tensors already loaded, for instance)."""
    chosen = sorted(shapes) if names is None else names
    if not chosen:
        raise InvalidTensorFile("the tensor file holds no tensors")
    sizes: dict[int, str] = {}
    for name in chosen:
        shape = shapes.get(name)
        if shape is None:
            raise InvalidTensorFile(f"tensor {name!r} is not in the file (has {sorted(shapes)})")
        if not shape:
            raise InvalidTensorFile(f"tensor {name!r} is a scalar; batch tensors need a dim 0")
        sizes.setdefault(shape[0], name)
    if len(sizes) > 1:
        detail = ", ".join(f"{n!r} has {rows}" for rows, n in sizes.items())
        raise InvalidTensorFile(f"tensors disagree on the number of rows (dim 0): {detail}")
    return next(iter(sizes))


def _layout_order(dtypes: dict[str, str]) -> list[str]:
    # Widest dtypes first keeps every tensor naturally aligned after an 8-aligned header.
    return sorted(dtypes, key=lambda n: (-DTYPE_SIZES[dtypes[n]], n))


def _encode_header(
    entries: dict[str, tuple[str, tuple[int, ...]]], order: list[str], metadata: dict[str, str]
) -> tuple[bytes, dict[str, int]]:
    """Header bytes (length prefix included) and each tensor's relative data offset."""
    obj: dict[str, Any] = {}
    offsets: dict[str, int] = {}
    cursor = 0
    for name in order:
        dtype, shape = entries[name]
        size = math.prod(shape) * DTYPE_SIZES[dtype]
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [cursor, cursor + size]}
        offsets[name] = cursor
        cursor += size
    if metadata:
        obj["__metadata__"] = dict(metadata)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad like safetensors so data starts 8-aligned
    return struct.pack("<Q", len(text)) + text, offsets


def _copy_range(src: IO[bytes], begin: int, end: int, dst: IO[bytes]) -> None:
    src.seek(begin)
    remaining = end - begin
    while remaining > 0:
        chunk = src.read(min(COPY_CHUNK_BYTES, remaining))
        if not chunk:
            raise InvalidTensorFile("tensor file shrank while it was being copied")
        dst.write(chunk)
        remaining -= len(chunk)


def write_shard(
    src_path: str | os.PathLike[str],
    header: Header,
    start_row: int,
    end_row: int,
    dst_path: str | os.PathLike[str],
) -> None:
    """Write rows [start_row, end_row) of every tensor of src_path as a new safetensors file."""
    rows = batch_rows(header)
    if not 0 <= start_row <= end_row <= rows:
        raise InvalidTensorFile(f"row range [{start_row}, {end_row}) is outside 0..{rows}")
    infos = header.tensors
    entries = {n: (i.dtype, (end_row - start_row, *i.shape[1:])) for n, i in infos.items()}
    order = _layout_order({n: i.dtype for n, i in infos.items()})
    head, _ = _encode_header(entries, order, header.metadata)
    with open(src_path, "rb") as src, open(dst_path, "wb") as dst:
        dst.write(head)
        for name in order:
            info = infos[name]
            base = info.begin
            _copy_range(src, base + start_row * info.row_bytes, base + end_row * info.row_bytes, dst)


def gather_rows(src_path: str | os.PathLike[str], rows: list[int], dst_path: str | os.PathLike[str]) -> None:
    """Write the given dim-0 rows (in the given order) of every tensor of src_path as a new file."""
    header = read_header(src_path)
    total = batch_rows(header)
    if any(not 0 <= r < total for r in rows):
        raise InvalidTensorFile(f"row indices must lie in 0..{total - 1}")
    infos = header.tensors
    entries = {n: (i.dtype, (len(rows), *i.shape[1:])) for n, i in infos.items()}
    order = _layout_order({n: i.dtype for n, i in infos.items()})
    head, _ = _encode_header(entries, order, header.metadata)
    with open(src_path, "rb") as src, open(dst_path, "wb") as dst:
        dst.write(head)
        for name in order:
            info = infos[name]
            for r in rows:
                _copy_range(src, info.begin + r * info.row_bytes, info.begin + (r + 1) * info.row_bytes, dst)


def split(
    src_path: str | os.PathLike[str], dst_dir: str | os.PathLike[str], rows_per_shard: int
) -> list[tuple[Path, int]]:
    """Split a tensor file along dim 0 into shards of at most rows_per_shard rows.

    Returns (shard path, row count) in row order. Shard bytes depend only on the input.
    """
    if rows_per_shard <= 0:
        raise InvalidTensorFile(f"rows_per_shard must be positive, got {rows_per_shard}")
    header = read_header(src_path)
    rows = batch_rows(header)
    out_dir = Path(dst_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[tuple[Path, int]] = []
    for index, start in enumerate(range(0, rows, rows_per_shard)):
        end = min(start + rows_per_shard, rows)
        dst = out_dir / f"shard_{index:05d}.safetensors"
        write_shard(src_path, header, start, end, dst)
        shards.append((dst, end - start))
    return shards


def concat(paths: Iterable[str | os.PathLike[str]], dst_path: str | os.PathLike[str]) -> None:
    """Concatenate safetensors files along dim 0, streaming; parts must agree on everything else."""
    parts = [Path(p) for p in paths]
    if not parts:
        raise InvalidTensorFile("concat needs at least one part")
    headers = [read_header(p) for p in parts]
    first = headers[0]
    for part, header in zip(parts[1:], headers[1:], strict=True):
        _check_same_layout(first, header, parts[0], part)
    batch_rows(first)  # every tensor needs a dim 0 to concatenate along
    entries = {
        name: (info.dtype, (sum(h.tensors[name].shape[0] for h in headers), *info.shape[1:]))
        for name, info in first.tensors.items()
    }
    order = _layout_order({n: i.dtype for n, i in first.tensors.items()})
    head, _ = _encode_header(entries, order, first.metadata)
    with open(dst_path, "wb") as dst:
        dst.write(head)
        for name in order:
            for part, header in zip(parts, headers, strict=True):
                info = header.tensors[name]
                with part.open("rb") as src:
                    _copy_range(src, info.begin, info.end, dst)


def _check_same_layout(a: Header, b: Header, path_a: Path, path_b: Path) -> None:
    if set(a.tensors) != set(b.tensors):
        raise InvalidTensorFile(
            f"cannot concatenate {path_b.name}: tensor names {sorted(b.tensors)} differ from "
            f"{path_a.name}'s {sorted(a.tensors)}"
        )
    for name, ia in a.tensors.items():
        ib = b.tensors[name]
        if ia.dtype != ib.dtype or ia.shape[1:] != ib.shape[1:] or len(ia.shape) != len(ib.shape):
            raise InvalidTensorFile(
                f"cannot concatenate tensor {name!r}: {path_a.name} has {ia.dtype}{list(ia.shape)}, "
                f"{path_b.name} has {ib.dtype}{list(ib.shape)} (only dim 0 may differ)"
            )


def save_tensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
) -> None:
    """Save tensors as safetensors (moved to CPU and made contiguous first)."""
    from safetensors.torch import save_file  # torch: the header functions above work without it

    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    save_file(cpu, os.fspath(path), metadata=metadata)


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Validate a safetensors file with read_header, then load all its tensors on CPU."""
    from safetensors.torch import load_file  # torch: the header functions above work without it

    read_header(path)
    return load_file(os.fspath(path), device="cpu")
