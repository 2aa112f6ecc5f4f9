"""A prompt file's rules (docs/GENERATION.md), checked without running anything: int64
`tokens` [prompts, max_len], int64 `lengths` [prompts] within 1..max_len, token ids within the
vocabulary, and in a shard (not in a submitter's file) int64 `seeds` [prompts].

Prompt i of a job seeded s samples with the seed prompt_seed(s, i). The coordinator writes those
seeds into each shard (`seeds`), so a task says nothing of its prompts' positions in the job nor
of the job's seed: a check's sampled prompts look like any shard's. A file without `seeds` is a
whole job's prompts (a local run, a serving request): prompt i gets prompt_seed(s, i).

One check for every reader: the coordinator reads prompt files as numpy arrays (it does not
import torch), nodes and the SDK as torch tensors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from tensorgrid.errors import InvalidTensorFile
from tensorgrid.workloads.arrays import Array, from_torch

if TYPE_CHECKING:
    import torch

__all__ = ["check_prompts", "job_seeds", "prompt_seed"]


def prompt_seed(seed: int, index: int) -> int:
    """The generator seed of prompt `index` of a job seeded `seed` (independent per prompt)."""
    digest = hashlib.sha256(f"tensorgrid-generation:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # a non-negative int64


def job_seeds(seed: int, start: int, end: int) -> np.ndarray:
    """int64 [end - start]: prompt_seed(seed, i) for i in start..end-1 (the coordinator computes a
    whole job's at intake: one hash per prompt from a shared prefix, about twice as fast)."""
    prefix = hashlib.sha256(f"tensorgrid-generation:{seed}:".encode())
    raw = bytearray()
    for i in range(start, end):
        digest = prefix.copy()
        digest.update(b"%d" % i)
        raw += digest.digest()[:8]
    return (np.frombuffer(bytes(raw), dtype=">u8") >> np.uint64(1)).astype(np.int64)


def check_prompts(tensors: Mapping[str, Array | torch.Tensor], vocab_size: int, *, submitted: bool = False) -> int:
    """The number of prompts in a prompt file's tensors; InvalidTensorFile says what is wrong.

    submitted: a submitter's prompt file (a job's input), which may not carry `seeds`: its
    prompts' seeds derive from the job's seed and their positions, so that the grid's tokens are
    the ones a local run of the file gives."""
    if "index" in tensors:  # the shard format before `seeds`: a file still carrying it would be misread
        raise InvalidTensorFile(
            "a prompt file carries no 'index': prompt i of a job samples from prompt_seed(seed, i), "
            "and a shard carries its prompts' seeds as 'seeds'"
        )
    if submitted and "seeds" in tensors:
        raise InvalidTensorFile(
            "a submitted prompt file may not carry 'seeds': prompt i samples from prompt_seed(seed, i) "
            "of the job's seed, and the coordinator writes each shard's seeds itself"
        )
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
    if "seeds" in tensors:
        seeds = _array(tensors["seeds"])
        if seeds.dtype != "I64" or seeds.shape != lengths.shape:
            raise InvalidTensorFile(f"'seeds' must be int64 [{tokens.shape[0]}], got {seeds.dtype} {list(seeds.shape)}")
        if seeds.data.size and int(seeds.data.min()) < 0:
            raise InvalidTensorFile("'seeds' must be non-negative")
    if tokens.shape[0] and (int(lengths.data.min()) < 1 or int(lengths.data.max()) > tokens.shape[1]):
        raise InvalidTensorFile(f"every prompt length must be in [1, {tokens.shape[1]}] (the width of 'tokens')")
    if tokens.data.size and (int(tokens.data.min()) < 0 or int(tokens.data.max()) >= vocab_size):
        raise InvalidTensorFile(
            f"token ids must be in [0, {vocab_size}) (the vocabulary), got {int(tokens.data.max())}"
        )
    return int(tokens.shape[0])


def _array(tensor: Array | torch.Tensor) -> Array:
    return tensor if isinstance(tensor, Array) else from_torch(tensor)
