"""A prompt file's rules (docs/GENERATION.md), checked without running anything: int64
`tokens` [prompts, max_len], int64 `lengths` [prompts] within 1..max_len, an optional int64
`index` [prompts], token ids within the vocabulary.

One check for every reader: the coordinator reads prompt files as numpy arrays (it does not
import torch), nodes and the SDK as torch tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from tensorgrid.errors import InvalidTensorFile
from tensorgrid.workloads.arrays import Array, from_torch

if TYPE_CHECKING:
    import torch

__all__ = ["check_prompts"]


def check_prompts(tensors: Mapping[str, Array | torch.Tensor], vocab_size: int) -> int:
    """The number of prompts in a prompt file's tensors; InvalidTensorFile says what is wrong."""
    for name in ("tokens", "lengths"):
        if name not in tensors:
            raise InvalidTensorFile(f"the prompt file needs a {name!r} tensor (it has {sorted(tensors)})")
    tokens, lengths = _array(tensors["tokens"]), _array(tensors["lengths"])
    if tokens.dtype != "I64" or tokens.ndim != 2:
        raise InvalidTensorFile(f"'tokens' must be int64 [prompts, max_len], got {tokens.dtype} {list(tokens.shape)}")
    if lengths.dtype != "I64" or lengths.shape != tokens.shape[:1]:
        raise InvalidTensorFile(
            f"'lengths' must be int64 [{tokens.shape[0]}], got {lengths.dtype} {list(lengths.shape)}"
        )
    if "index" in tensors:
        index = _array(tensors["index"])
        if index.dtype != "I64" or index.shape != lengths.shape:
            raise InvalidTensorFile(f"'index' must be int64 [{tokens.shape[0]}]")
    if tokens.shape[0] and (int(lengths.data.min()) < 1 or int(lengths.data.max()) > tokens.shape[1]):
        raise InvalidTensorFile(f"every prompt length must be in [1, {tokens.shape[1]}] (the width of 'tokens')")
    if tokens.data.size and (int(tokens.data.min()) < 0 or int(tokens.data.max()) >= vocab_size):
        raise InvalidTensorFile(
            f"token ids must be in [0, {vocab_size}) (the vocabulary), got {int(tokens.data.max())}"
        )
    return int(tokens.shape[0])


def _array(tensor: Array | torch.Tensor) -> Array:
    return tensor if isinstance(tensor, Array) else from_torch(tensor)
