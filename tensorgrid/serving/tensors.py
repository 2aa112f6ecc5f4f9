"""A request's or an answer's tensors as safetensors bytes, held in memory.

Bytes from a stranger are checked like a stranger's file (tensorgrid.workloads.tensorfile:
no pickle, a bounded header, a layout that adds up) before safetensors reads them. The
`arrays_` twins read and write numpy arrays (tensorgrid.workloads.arrays), for processes
that do not import torch; both give and take the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from tensorgrid.errors import InvalidTensorFile
from tensorgrid.workloads import arrays
from tensorgrid.workloads.arrays import Array
from tensorgrid.workloads.tensorfile import Header, header_of_bytes

if TYPE_CHECKING:
    import torch


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes of the tensors (moved to CPU, made contiguous; keys sorted)."""
    from safetensors.torch import save

    return save({name: t.detach().to("cpu").contiguous() for name, t in sorted(tensors.items())})


def check_tensor_bytes(data: bytes, max_bytes: int, name: str = "request") -> Header:
    """The header of safetensors bytes within max_bytes (0: no limit), else a clear error."""
    if max_bytes and len(data) > max_bytes:
        raise InvalidTensorFile(f"{name}: {len(data)} bytes is over the limit of {max_bytes}")
    return header_of_bytes(data, name)


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
