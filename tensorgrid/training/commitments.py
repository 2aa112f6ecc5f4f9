"""Commitments to a worker's training trajectory: state digests chained every k steps.

digest(state) = sha256 over the tensors in sorted-name order, each framed as
    name (utf-8) ‖ 0x00 ‖ dtype (e.g. "torch.float32") ‖ 0x00 ‖ shape (JSON list) ‖ 0x00 ‖ raw bytes
(raw bytes little-endian, C order), so two different states cannot hash alike by moving
bytes between tensors. The state is the full training state of a checkpoint (model weights
and buffers, and the AdamW moments and step count: see inner.training_state), which binds
everything a verifier needs to replay the next segment.

chain: c_0 = sha256(GENESIS ‖ digest(state at step 0)),
       c_j = sha256(c_{j-1} ‖ digest(state at checkpoint_steps[j]));
the final commitment is the last c_j as 64 hex digits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

import torch

__all__ = ["GENESIS", "chain", "chain_link", "checkpoint_steps", "state_digest"]

GENESIS = bytes(32)


def state_digest(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """sha256 of named tensors in sorted-name order (framing in the module docstring)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode() + b"\0" + str(t.dtype).encode() + b"\0")
        h.update(json.dumps(list(t.shape)).encode() + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def chain_link(previous: bytes, digest: bytes) -> bytes:
    """The next chain hash: sha256(previous ‖ digest)."""
    return hashlib.sha256(previous + digest).digest()


def chain(digests: Iterable[bytes], start: bytes = GENESIS) -> list[str]:
    """Chain hashes (hex) for consecutive checkpoint digests."""
    out: list[str] = []
    current = start
    for digest in digests:
        current = chain_link(current, digest)
        out.append(current.hex())
    return out


def checkpoint_steps(steps: int, every: int) -> list[int]:
    """Steps at which a run of `steps` inner steps commits: 0, k, 2k, ... and always the last."""
    if steps < 1 or every < 1:
        raise ValueError(f"steps and checkpoint interval must be positive, got {steps} and {every}")
    marks = list(range(0, steps + 1, every))
    if marks[-1] != steps:
        marks.append(steps)
    return marks
