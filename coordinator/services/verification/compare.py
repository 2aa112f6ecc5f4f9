"""Comparing re-executed rows with a node's rows, within a tolerance per dtype and device class
(the table and its calibration: tensorgrid/workloads/tolerance.py; either side on CUDA
widens it by CUDA_FACTOR)."""

from __future__ import annotations

import os

import torch

from tensorgrid.errors import TensorGridError
from tensorgrid.workloads.tensorfile import load_tensors
from tensorgrid.workloads.tolerance import CUDA_FACTOR, TOLERANCE, device_class, tolerance

__all__ = ["CUDA_FACTOR", "TOLERANCE", "device_class", "load_rows", "rows_match", "tolerance"]


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
