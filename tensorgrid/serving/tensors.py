"""A request's or an answer's tensors as safetensors bytes, held in memory.

Bytes from a stranger are checked like a stranger's file (tensorgrid.workloads.tensorfile:
no pickle, a bounded header, a layout that adds up) before safetensors reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from tensorgrid.errors import InvalidTensorFile
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
