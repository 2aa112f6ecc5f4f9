"""Pseudo-gradient compression and the result file a training task uploads.

Result file = one safetensors file, so the one output hash a receipt signs covers all of it:
  * tensors: each pseudo-gradient under its state_dict name, stored as
      - "none": float32;
      - "fp16": float16 (refused if a value exceeds fp16's range);
      - "int8": int8 q = round(x / s) clipped to ±127 with s = max|x| / 127, plus the scale
        s as a 0-d float32 tensor named "<name>.__scale__". Error per element ≤ s / 2.
  * metadata (strings): format, compression, rows (shard rows, the averaging weight), steps,
    losses (JSON list, one mean loss per inner step), checkpoint_steps, checkpoint_digests
    (JSON list, per checkpoint digest(model part) ‖ digest(optimizer part) in hex; see
    commitments), commitments (JSON list of chain hashes over those digests, hex) and
    final_commitment. read_result recomputes the chain from the digests.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch

from tensorgrid.errors import ExecutionError, InvalidTensorFile
from tensorgrid.training.commitments import DIGEST_BYTES, chain, final_model_part, state_digest
from tensorgrid.types import ErrorKind
from tensorgrid.workloads.tensorfile import load_tensors, read_header, save_tensors

__all__ = [
    "FORMAT",
    "SCALE_SUFFIX",
    "PseudoGradient",
    "compress",
    "compressed_bytes",
    "decompress",
    "read_result",
    "seal",
    "write_result",
]

FORMAT = "tensorgrid.pseudo_gradient.v3"  # v2: split model/optimizer digests; v3: the last one sealed
SCALE_SUFFIX = ".__scale__"
_FP16_MAX = float(torch.finfo(torch.float16).max)
_STORED_DTYPES = {"none": torch.float32, "fp16": torch.float16, "int8": torch.int8}


@dataclass(frozen=True)
class PseudoGradient:
    """A task's result: global − local per tensor (float32), with its trace and commitments."""

    tensors: dict[str, torch.Tensor]
    rows: int
    steps: int
    losses: list[float]
    checkpoint_steps: list[int]
    commitments: list[str]
    compression: str = "none"  # what the last checkpoint digest was sealed for (see seal)
    checkpoint_digests: list[str] = field(default_factory=list)  # hex, per checkpoint (see commitments)

    @property
    def final_commitment(self) -> str:
        return self.commitments[-1]


def compress(tensors: dict[str, torch.Tensor], compression: str) -> dict[str, torch.Tensor]:
    """Encode float tensors for the wire (see the module docstring for each scheme)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            raise ExecutionError(ErrorKind.INVALID_INPUT, f"tensor name {name!r} is reserved")
        x = value.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise ExecutionError(ErrorKind.PROGRAM_ERROR, f"pseudo-gradient {name!r} is not finite: training diverged")
        amax = float(x.abs().max()) if x.numel() else 0.0
        if compression == "none":
            out[name] = x
        elif compression == "fp16":
            if amax > _FP16_MAX:
                raise ExecutionError(
                    ErrorKind.PROGRAM_ERROR,
                    f"pseudo-gradient {name!r} reaches {amax:.3g}, beyond fp16's range: use int8 or none",
                )
            out[name] = x.to(torch.float16)
        elif compression == "int8":
            scale = amax / 127.0
            q = torch.zeros_like(x) if scale == 0.0 else torch.round(x / scale).clamp_(-127, 127)
            out[name] = q.to(torch.int8)
            out[name + SCALE_SUFFIX] = torch.tensor(scale, dtype=torch.float32)
        else:
            raise ExecutionError(ErrorKind.INVALID_INPUT, f"unknown compression {compression!r}")
    return out


def decompress(stored: dict[str, torch.Tensor], compression: str) -> dict[str, torch.Tensor]:
    """Decode wire tensors to float32, checking each one has the dtype the scheme promises."""
    want = _STORED_DTYPES.get(compression)
    if want is None:
        raise InvalidTensorFile(f"unknown compression {compression!r}")
    names = [n for n in stored if not n.endswith(SCALE_SUFFIX)]
    scales = {n for n in stored if n.endswith(SCALE_SUFFIX)}
    expected_scales = {n + SCALE_SUFFIX for n in names} if compression == "int8" else set()
    if scales != expected_scales:
        raise InvalidTensorFile(f"{compression} pseudo-gradient has wrong scale tensors")
    out: dict[str, torch.Tensor] = {}
    for name in names:
        value = stored[name]
        if value.dtype != want:
            raise InvalidTensorFile(f"{name!r} is {value.dtype}; {compression} stores {want}")
        decoded = value.to(torch.float32)
        if compression == "int8":
            scale = stored[name + SCALE_SUFFIX]
            if scale.dtype != torch.float32 or scale.ndim != 0 or not math.isfinite(float(scale)):
                raise InvalidTensorFile(f"{name + SCALE_SUFFIX!r} must be a finite float32 scalar")
            decoded = decoded * scale
        if not bool(torch.isfinite(decoded).all()):
            raise InvalidTensorFile(f"pseudo-gradient {name!r} holds non-finite values")
        out[name] = decoded
    return out


def compressed_bytes(shapes: dict[str, tuple[int, ...]], compression: str) -> int:
    """Payload bytes of a pseudo-gradient with these tensor shapes (safetensors header excluded)."""
    per = {"none": 4, "fp16": 2, "int8": 1}[compression]
    scales = 4 * len(shapes) if compression == "int8" else 0
    return sum(math.prod(s) for s in shapes.values()) * per + scales


def seal(result: PseudoGradient, weights: Mapping[str, torch.Tensor], compression: str) -> PseudoGradient:
    """The result with its last checkpoint's model digest replaced by that of
    final_model_part(weights, the pseudo-gradient as `compression` decodes it), the chain
    recomputed, and `compression` recorded. `weights` are the round's global weights."""
    if not result.checkpoint_digests:
        raise ValueError("a result without checkpoint digests cannot be sealed")
    decoded = decompress(compress(result.tensors, compression), compression)
    model = state_digest(final_model_part(weights, decoded, result.checkpoint_steps[-1]))
    last = model.hex() + result.checkpoint_digests[-1][2 * DIGEST_BYTES :]
    digests = [*result.checkpoint_digests[:-1], last]
    links = chain(bytes.fromhex(d) for d in digests)
    return replace(result, checkpoint_digests=digests, commitments=links, compression=compression)


def write_result(result: PseudoGradient, path: str | os.PathLike[str], compression: str) -> None:
    """Save a task result (compressed pseudo-gradient + trace + commitments) as safetensors.

    Raises ValueError when the result was sealed for another compression."""
    if compression != result.compression:
        raise ValueError(f"the result was sealed for {result.compression!r} compression, not {compression!r}")
    metadata = {
        "format": FORMAT,
        "compression": compression,
        "rows": str(result.rows),
        "steps": str(result.steps),
        # Five significant digits: the trace is for people and plots, and full floats
        # would make this header a fifth of what a worker uploads per round.
        "losses": json.dumps([float(f"{x:.5g}") for x in result.losses], separators=(",", ":")),
        "checkpoint_steps": json.dumps(result.checkpoint_steps, separators=(",", ":")),
        "checkpoint_digests": json.dumps(result.checkpoint_digests, separators=(",", ":")),
        "commitments": json.dumps(result.commitments, separators=(",", ":")),
        "final_commitment": result.final_commitment,
    }
    save_tensors(compress(result.tensors, compression), path, metadata=metadata)


def read_result(path: str | os.PathLike[str]) -> PseudoGradient:
    """Load and check a task result file; InvalidTensorFile says what is wrong with it."""
    meta = read_header(path).metadata
    if meta.get("format") != FORMAT:
        raise InvalidTensorFile(f"not a pseudo-gradient file (format {meta.get('format')!r})")
    try:
        rows, steps = int(meta["rows"]), int(meta["steps"])
        losses = [float(x) for x in json.loads(meta["losses"])]
        marks = [int(x) for x in json.loads(meta["checkpoint_steps"])]
        commitments = [str(c) for c in json.loads(meta["commitments"])]
        digests = [str(d) for d in json.loads(meta["checkpoint_digests"])]
        links = chain(bytes.fromhex(d) for d in digests)
        compression = meta["compression"]
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidTensorFile(f"pseudo-gradient metadata is malformed: {exc}") from None
    if rows < 1 or len(losses) != steps or len(marks) != len(commitments) or not commitments:
        raise InvalidTensorFile("pseudo-gradient metadata is inconsistent (rows, steps, losses, commitments)")
    if any(len(d) != 4 * DIGEST_BYTES for d in digests) or links != [c.lower() for c in commitments]:
        raise InvalidTensorFile("the commitments are not the chain over the checkpoint digests")
    if meta.get("final_commitment") != commitments[-1]:
        raise InvalidTensorFile("final_commitment is not the last chain hash")
    tensors = decompress(load_tensors(path), compression)
    return PseudoGradient(tensors, rows, steps, losses, marks, commitments, compression, digests)
