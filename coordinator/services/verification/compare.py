"""Comparing re-executed rows with a node's rows, within a tolerance per dtype and device class.

Honest nodes do not agree bit for bit: BLAS kernels sum in an order that depends on the
thread count and batch size, and GPUs use other kernels again. Measured here (torch 2.13
CPU, float32 GELU MLPs of width 64/384/1024 and depth 1/6/12, 1,024 rows, threads 1 vs 2,
batch sizes 1, 7, 256 and all rows): max |a-b| = 4.5e-8. The float32 tolerance (atol 1e-4,
rtol 1e-3) leaves three orders of magnitude of room for other CPUs and models, and is still
far below what a corrupted row changes. `CUDA_FACTOR` (10x) is for comparisons involving a
CUDA node; it is not applied yet (every comparison uses the CPU class; no GPU to calibrate
on). Integer and bool outputs must match exactly.
"""

from __future__ import annotations

import os

import torch

from tensorgrid.errors import TensorGridError
from tensorgrid.workloads.tensorfile import load_tensors

# (atol, rtol) per floating dtype, for CPU↔CPU comparisons.
TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-8, 1e-6),
    torch.float32: (1e-4, 1e-3),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}
CUDA_FACTOR = 10.0


def tolerance(dtype: torch.dtype, device_class: str = "cpu") -> tuple[float, float]:
    atol, rtol = TOLERANCE.get(dtype, (0.0, 0.0))
    factor = CUDA_FACTOR if device_class == "cuda" else 1.0
    return atol * factor, rtol * factor


def rows_match(
    reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor], device_class: str = "cpu"
) -> bool:
    """True when both hold the same tensors, shapes and dtypes, equal within tolerance."""
    if set(reference) != set(candidate):
        return False
    for name, a in reference.items():
        b = candidate[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            atol, rtol = tolerance(a.dtype, device_class)
            if not bool(torch.isclose(a.double(), b.double(), rtol=rtol, atol=atol).all()):
                return False
            if bool((a.isnan() != b.isnan()).any()):
                return False
        elif not torch.equal(a, b):
            return False
    return True


def load_rows(path: str | os.PathLike[str], rows: list[int] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of an output file, optionally only the given dim-0 rows (in that order)."""
    try:
        tensors = load_tensors(path)
    except TensorGridError:
        return {}
    if rows is None:
        return tensors
    index = torch.tensor(rows, dtype=torch.long)
    try:
        return {k: v.index_select(0, index) for k, v in tensors.items()}
    except (IndexError, RuntimeError):
        return {}
