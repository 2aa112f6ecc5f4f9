"""Commitments to a worker's training trajectory: state digests chained every k steps.

digest(tensors) = sha256 over the tensors in sorted-name order, each framed as
    name (utf-8) ‖ 0x00 ‖ dtype (e.g. "torch.float32") ‖ 0x00 ‖ shape (JSON list) ‖ 0x00 ‖ raw bytes
(raw bytes little-endian, C order), so two different states cannot hash alike by moving
bytes between tensors.

A checkpoint's full training state (inner._Run.state) splits in two parts, hashed
apart so a verifier can check one part without the other's bytes:
  * the model part: the model's state_dict ("model.*") and the AdamW step counter;
  * the optimizer part: the AdamW moments ("adamw.exp_avg.*", "adamw.exp_avg_sq.*"),
    twice the model's size.
checkpoint_digest(state) = digest(model part) ‖ digest(optimizer part) (64 bytes).

The last checkpoint's model part is not the node's state but what its upload stands for
(final_model_part): global weights − the pseudo-gradient as the coordinator decodes it, per
tensor, with the step counter. Nothing after the last checkpoint trains from it, and the
coordinator rebuilds it from the result file and the round's weights, so it is never
revealed; a node that committed one state and uploaded another breaks its own chain.

chain: c_0 = sha256(GENESIS ‖ checkpoint_digest(state at step 0)),
       c_j = sha256(c_{j-1} ‖ checkpoint_digest(state at checkpoint_steps[j]));
the final commitment is the last c_j as 64 hex digits. The result file carries every
checkpoint_digest with the chain, so a revealed model part is checked against its own
digest and the chain is recomputed from the digests up to the commitment the receipt signs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

import torch

__all__ = [
    "DIGEST_BYTES",
    "GENESIS",
    "MODEL_PREFIX",
    "OPTIMIZER_PREFIX",
    "STEP_KEY",
    "chain",
    "chain_link",
    "checkpoint_digest",
    "checkpoint_steps",
    "final_model_part",
    "model_part",
    "state_digest",
]

GENESIS = bytes(32)
OPTIMIZER_PREFIX = "adamw.exp_avg"  # both moments' names start with it; the step counter's does not
MODEL_PREFIX = "model."  # the model's state_dict entries in a checkpoint
STEP_KEY = "adamw.step"  # the AdamW step counter (int64, 0-d)
DIGEST_BYTES = 32


def state_digest(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """sha256 of named tensors in sorted-name order (framing in the module docstring)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode() + b"\0" + str(t.dtype).encode() + b"\0")
        h.update(json.dumps(list(t.shape)).encode() + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def model_part(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a training state that are not optimizer moments (what a node reveals)."""
    return {n: t for n, t in state.items() if not n.startswith(OPTIMIZER_PREFIX)}


def final_model_part(
    weights: Mapping[str, torch.Tensor], decoded: Mapping[str, torch.Tensor], step: int
) -> dict[str, torch.Tensor]:
    """The model part the last checkpoint commits: for each pseudo-gradient tensor, the round's
    global weights − the pseudo-gradient as decoded from the result file (float32, on the CPU,
    so node and coordinator compute the same bits), and the step counter `step`.

    Raises KeyError for a pseudo-gradient tensor the weights do not hold."""
    out = {
        MODEL_PREFIX + name: weights[name].detach().to("cpu", torch.float32) - pg.detach().to("cpu", torch.float32)
        for name, pg in decoded.items()
    }
    out[STEP_KEY] = torch.tensor(step, dtype=torch.int64)
    return out


def checkpoint_digest(state: Mapping[str, torch.Tensor]) -> bytes:
    """digest(model part) ‖ digest(optimizer part) of a full training state."""
    optimizer = {n: t for n, t in state.items() if n.startswith(OPTIMIZER_PREFIX)}
    return state_digest(model_part(state)) + state_digest(optimizer)


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
