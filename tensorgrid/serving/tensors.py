"""A request's or an answer's tensors as safetensors bytes, held in memory.

Bytes from a stranger are checked like a stranger's file (tensorgrid.workloads.tensorfile:
no pickle, a bounded header, a layout that adds up) before safetensors reads them. The
`arrays_` twins read and write numpy arrays (tensorgrid.workloads.arrays), for processes
that do not import torch; both give and take the same bytes.

Every request crosses these on its way (the coordinator checks it, the worker checks and reads
it, then writes its answer), so they are lean: a header already checked is remembered by its
bytes, and an answer is written by safetensors' serializer from the tensors' own memory, not
through safetensors.torch.save's Python walk over them (the same bytes; docs/SERVING.md, tenth
pass).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tensorgrid.errors import InvalidTensorFile
from tensorgrid.workloads import arrays
from tensorgrid.workloads.arrays import Array
from tensorgrid.workloads.tensorfile import Header, header_of_bytes

if TYPE_CHECKING:
    import torch

MEMO_HEADER_BYTES = 4096  # headers up to this long are remembered once checked
MEMO_ENTRIES = 64
# (the header's bytes with its length prefix, the whole file's length) → its checked Header.
# header_of_bytes reads nothing else, so bytes with an equal key pass or fail alike.
_checked: OrderedDict[tuple[bytes, int], Header] = OrderedDict()
# torch dtypes (by name) that safetensors' serializer takes as they are
_SPEC_DTYPES = frozenset({
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
    "uint64", "uint32", "uint16", "uint8", "bool",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "complex64",
})  # fmt: skip


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes of the tensors (moved to CPU, made contiguous; keys sorted): the bytes
    safetensors.torch.save gives, which it still writes where the short way does not apply."""
    import torch
    from safetensors import TensorSpec, serialize

    keep = {name: t.detach().to("cpu").contiguous() for name, t in sorted(tensors.items())}
    dtypes = {name: str(t.dtype).removeprefix("torch.") for name, t in keep.items()}
    if _shared(keep) or any(t.layout != torch.strided or dtypes[n] not in _SPEC_DTYPES for n, t in keep.items()):
        from safetensors.torch import save

        return save(keep)  # its own checks and errors (shared memory, sparse tensors, other dtypes)
    specs = {
        name: TensorSpec(
            dtype=dtypes[name], shape=list(t.shape), data_ptr=t.data_ptr(), data_len=t.numel() * t.element_size()
        )
        for name, t in keep.items()
    }
    out = bytes(serialize(specs))  # reads the tensors' memory: `keep` holds it until here
    del keep
    return out


def _shared(tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether two of the tensors share storage (safetensors.torch.save refuses them)."""
    if len(tensors) < 2:
        return False
    storages = [t.untyped_storage().data_ptr() for t in tensors.values() if t.numel()]
    return len(set(storages)) != len(storages)


def check_tensor_bytes(data: bytes, max_bytes: int, name: str = "request") -> Header:
    """The header of safetensors bytes within max_bytes (0: no limit), else a clear error. A
    header checked before (the same bytes, in a file of the same length) is not parsed again;
    the Header returned may be shared: read it, never change it."""
    if max_bytes and len(data) > max_bytes:
        raise InvalidTensorFile(f"{name}: {len(data)} bytes is over the limit of {max_bytes}")
    key = _memo_key(data)
    if key is None:
        return header_of_bytes(data, name)
    header = _checked.get(key)
    if header is None:
        header = header_of_bytes(data, name)  # raises: nothing is remembered
        _checked[key] = header
        if len(_checked) > MEMO_ENTRIES:
            _checked.popitem(last=False)
    return header


def _memo_key(data: bytes) -> tuple[bytes, int] | None:
    if len(data) < 9:
        return None
    (header_len,) = struct.unpack_from("<Q", data)
    if header_len > MEMO_HEADER_BYTES or 8 + header_len > len(data):
        return None  # header_of_bytes says what is wrong, or parses a long header each time
    return bytes(data[: 8 + header_len]), len(data)


def tensors_from_bytes(data: bytes, max_bytes: int = 0, name: str = "request") -> dict[str, torch.Tensor]:
    """The tensors of checked safetensors bytes, on CPU."""
    from safetensors.torch import load

    check_tensor_bytes(data, max_bytes, name)
    return load(data)


def arrays_to_bytes(tensors: Mapping[str, Array]) -> bytes:
    """tensors_to_bytes for numpy arrays: the same bytes for the same tensors."""
    return arrays.arrays_to_bytes(tensors)


def arrays_from_bytes(data: bytes, max_bytes: int = 0, name: str = "request") -> dict[str, Array]:
    """tensors_from_bytes as numpy arrays."""
    check_tensor_bytes(data, max_bytes, name)
    return arrays.arrays_from_bytes(data, name)
