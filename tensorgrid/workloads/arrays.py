"""Safetensors tensors as numpy arrays, for processes that only read, slice, join, compare and
write tensors (the coordinator's checks) and so need not import torch.

An `Array` keeps the safetensors dtype string beside its elements' storage: numpy has no
bfloat16 or float8, so those are held as their raw bits (uint16, uint8) and decoded to
floats only when asked (`floats`). Slicing, joining and writing therefore never change a bit,
and arrays_to_bytes gives the bytes safetensors.torch.save gives for the same tensors. BOOL
is held as its bytes too: any non-zero byte reads as true, as torch reads it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tensorgrid.errors import InvalidTensorFile
from tensorgrid.workloads.tensorfile import header_of_bytes, read_header

if TYPE_CHECKING:
    import torch

__all__ = [
    "FLOAT_DTYPES",
    "Array",
    "array_of",
    "arrays_from_bytes",
    "arrays_to_bytes",
    "concat_arrays",
    "from_torch",
    "load_arrays",
    "save_arrays",
    "to_torch",
]

# How each safetensors dtype is stored here (little-endian, as in the file), and its name in
# torch and in safetensors' serializer (the same names).
_STORAGE: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "u1",
    "F8_E4M3": "u1", "F8_E5M2": "u1", "F8_E4M3FNUZ": "u1", "F8_E5M2FNUZ": "u1",
    "C64": "<c8",
}  # fmt: skip
_TORCH_NAMES: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "C64": "complex64",
}  # fmt: skip
_FROM_TORCH = {f"torch.{name}": dtype for dtype, name in _TORCH_NAMES.items()}
# Real floating dtypes (torch's is_floating_point); C64 is complex, compared exactly.
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"})
# numpy's own dtypes (kind and size) that are safetensors dtypes
_NATIVE = {
    "f8": "F64", "f4": "F32", "f2": "F16", "i8": "I64", "i4": "I32", "i2": "I16", "i1": "I8",
    "u8": "U64", "u4": "U32", "u2": "U16", "u1": "U8", "b1": "BOOL", "c8": "C64",
}  # fmt: skip


def _float8_table(exponent_bits: int, bias: int, fnuz: bool) -> np.ndarray:
    """The float64 value of each of the 256 bytes of a float8 format.

    IEEE-like (E5M2): the top exponent is inf (mantissa 0) or NaN. FN (E4M3): no inf, only
    S.1111.111 is NaN. FNUZ: no inf and no negative zero; 0x80 alone is NaN.
    """
    mantissa_bits = 7 - exponent_bits
    top = (1 << exponent_bits) - 1
    table = np.empty(256, dtype=np.float64)
    for byte in range(256):
        sign = -1.0 if byte & 0x80 else 1.0
        exponent, mantissa = (byte >> mantissa_bits) & top, byte & ((1 << mantissa_bits) - 1)
        if exponent == 0:
            value = sign * mantissa * 2.0 ** (1 - bias - mantissa_bits)
        else:
            value = sign * (1 + mantissa / (1 << mantissa_bits)) * 2.0 ** (exponent - bias)
        if fnuz:
            value = float("nan") if byte == 0x80 else value
        elif exponent_bits == 5 and exponent == top:
            value = sign * float("inf") if mantissa == 0 else math.copysign(float("nan"), sign)
        elif exponent == top and mantissa == (1 << mantissa_bits) - 1:
            value = math.copysign(float("nan"), sign)
        table[byte] = value
    return table


_FLOAT8: dict[str, np.ndarray] = {
    "F8_E4M3": _float8_table(4, 7, fnuz=False),
    "F8_E5M2": _float8_table(5, 15, fnuz=False),
    "F8_E4M3FNUZ": _float8_table(4, 8, fnuz=True),
    "F8_E5M2FNUZ": _float8_table(5, 16, fnuz=True),
}


@dataclass(frozen=True, eq=False)
class Array:
    """One tensor: its safetensors dtype and its elements' storage (see the module's docstring)."""

    dtype: str
    data: np.ndarray

    def __post_init__(self) -> None:
        expected = np.dtype(_STORAGE[self.dtype])
        if self.data.dtype != expected:
            raise TypeError(f"a {self.dtype} array is stored as {expected}, not {self.data.dtype}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def __getitem__(self, key: Any) -> Array:
        """numpy indexing of the elements (rows, slices), keeping the dtype; C-contiguous."""
        return Array(self.dtype, _contiguous(np.asarray(self.data[key])))

    def floats(self) -> np.ndarray:
        """A real floating array's values as float64 (exact: every float dtype fits)."""
        if self.dtype in _FLOAT8:
            return _FLOAT8[self.dtype][self.data]
        if self.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{self.dtype} is not a floating dtype")
        data = self.data
        if self.dtype == "BF16":  # bfloat16 is the top half of a float32
            data = (data.astype(np.uint32) << 16).view(np.float32)
        with np.errstate(invalid="ignore"):  # a signalling NaN widens to a quiet one (the CPU flags it)
            return data.astype(np.float64)

    def values(self) -> np.ndarray:
        """The elements as numpy reads them: floats decoded (float64 for BF16 and F8), BOOL as bool."""
        if self.dtype == "BOOL":
            return self.data != 0
        if self.dtype == "BF16" or self.dtype in _FLOAT8:
            return self.floats()
        return self.data


def _contiguous(data: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping a scalar a scalar (np.ascontiguousarray makes it 1-d)."""
    return data if data.flags.c_contiguous else data.copy(order="C")


def array_of(values: np.ndarray | Sequence[Any], dtype: str = "") -> Array:
    """An Array of numpy values (dtype: numpy's own, or the safetensors dtype to store them as;
    BF16 and F8 are taken as raw bits)."""
    arr = np.asarray(values)
    dtype = dtype or _NATIVE.get(f"{arr.dtype.kind}{arr.dtype.itemsize}", "")
    if not dtype:
        raise TypeError(f"numpy dtype {arr.dtype} has no safetensors dtype")
    storage = np.dtype(_STORAGE[dtype])
    return Array(dtype, _contiguous(arr.astype(storage, copy=False)))


def concat_arrays(parts: Sequence[Array]) -> Array:
    """The parts joined along dim 0; they must share the dtype."""
    dtypes = {p.dtype for p in parts}
    if len(dtypes) != 1:
        raise InvalidTensorFile(f"cannot join arrays of dtypes {sorted(dtypes)}")
    return Array(parts[0].dtype, np.concatenate([p.data for p in parts]))


def _array(dtype: str, shape: Sequence[int], buffer: Any, offset: int, rows: list[int] | None, name: str) -> Array:
    storage = np.dtype(_STORAGE[dtype])
    data = np.frombuffer(buffer, dtype=storage, count=math.prod(shape), offset=offset).reshape(shape)
    return Array(dtype, data if rows is None else _take(data, rows, name))


def _take(data: np.ndarray, rows: list[int], name: str) -> np.ndarray:
    """Rows of dim 0, like torch's index_select: a scalar takes only [0] (and stays a scalar)."""
    if data.ndim == 0:
        if list(rows) != [0]:
            raise InvalidTensorFile(f"tensor {name!r} is a scalar: rows {rows} cannot be taken from it")
        return data
    if any(not 0 <= r < data.shape[0] for r in rows):
        raise InvalidTensorFile(f"tensor {name!r} has {data.shape[0]} rows; rows must lie in 0..{data.shape[0] - 1}")
    return data[np.asarray(rows, dtype=np.int64)]


def load_arrays(path: str | os.PathLike[str], rows: list[int] | None = None) -> dict[str, Array]:
    """Validate a safetensors file with read_header, then read its tensors (only the given dim-0
    rows, in that order, when rows is given; InvalidTensorFile when one lies outside a tensor).

    The file is also opened by safetensors itself, which checks it as load_tensors does (a
    file it refuses raises its SafetensorError), so both accept the same files.
    """
    from safetensors import safe_open

    header = read_header(path)
    with safe_open(os.fspath(path), framework="numpy"):
        pass
    out: dict[str, Array] = {}
    with open(path, "rb") as f:
        for name, info in header.tensors.items():
            f.seek(info.begin)
            buffer = bytearray(info.nbytes)
            if f.readinto(buffer) != info.nbytes:
                raise InvalidTensorFile(f"{os.fspath(path)} shrank while it was being read")
            out[name] = _array(info.dtype, info.shape, buffer, 0, rows, name)
    return out


def arrays_from_bytes(data: bytes, name: str = "request") -> dict[str, Array]:
    """The tensors of safetensors bytes held in memory, checked as read_header checks a file,
    then read by safetensors (which accepts what safetensors.torch.load accepts)."""
    from safetensors import deserialize

    header_of_bytes(data, name)
    return {n: _array(t["dtype"], t["shape"], t["data"], 0, None, n) for n, t in deserialize(data)}


def _specs(arrays: Mapping[str, Array]) -> tuple[dict[str, Any], list[np.ndarray]]:
    from safetensors import TensorSpec

    keep: list[np.ndarray] = []  # the serializer reads raw pointers: keep the buffers alive
    specs: dict[str, Any] = {}
    for name, array in sorted(arrays.items()):
        data = _contiguous(array.data)
        keep.append(data)
        specs[name] = TensorSpec(
            dtype=_TORCH_NAMES[array.dtype], shape=list(data.shape), data_ptr=data.ctypes.data, data_len=data.nbytes
        )
    return specs, keep


def arrays_to_bytes(arrays: Mapping[str, Array], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of the arrays: the bytes safetensors.torch.save gives for the same tensors."""
    from safetensors import serialize

    specs, keep = _specs(arrays)
    out = bytes(serialize(specs, metadata=metadata))
    del keep
    return out


def save_arrays(
    arrays: Mapping[str, Array], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """Save arrays as safetensors (the file safetensors.torch.save_file writes for the same tensors)."""
    from safetensors import serialize_file

    specs, keep = _specs(arrays)
    serialize_file(specs, os.fspath(path), metadata=metadata)
    del keep


def from_torch(tensor: torch.Tensor) -> Array:
    """A torch tensor as an Array (moved to CPU; the same bits; shares a CPU tensor's memory
    when it is contiguous)."""
    import torch

    dtype = _FROM_TORCH.get(str(tensor.dtype))
    if dtype is None:
        raise TypeError(f"{tensor.dtype} has no safetensors dtype")
    raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return Array(dtype, raw.view(_STORAGE[dtype]).reshape(tuple(tensor.shape)))


def to_torch(array: Array) -> torch.Tensor:
    """An Array as a torch tensor (the same bits)."""
    import torch

    target = getattr(torch, _TORCH_NAMES[array.dtype])
    if array.data.size == 0:  # torch cannot view an empty byte tensor as a wider dtype
        return torch.empty(array.shape, dtype=target)
    raw = torch.from_numpy(array.data.reshape(-1).view(np.uint8).copy())
    return raw.view(target).reshape(array.shape)
