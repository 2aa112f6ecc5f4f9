"""Comparing re-executed rows with a node's rows, within a tolerance per dtype and device class
(the table and its calibration: tensorgrid/workloads/tolerance.py; either side on CUDA
widens it by CUDA_FACTOR).

Tensors are numpy arrays here (tensorgrid.workloads.arrays): the coordinator compares and
slices outputs without importing torch."""

from __future__ import annotations

import os

import numpy as np

from tensorgrid.errors import TensorGridError
from tensorgrid.workloads.arrays import Array, load_arrays
from tensorgrid.workloads.tolerance import CUDA_FACTOR, TOLERANCES, device_class, tolerance

__all__ = ["CUDA_FACTOR", "TOLERANCES", "Rows", "device_class", "load_rows", "rows_match", "tolerance"]

Rows = dict[str, Array]


def rows_match(reference: Rows, candidate: Rows, device_class: str = "cpu") -> bool:
    """True when both hold the same tensors, shapes and dtypes, equal within tolerance.

    Floats are compared as float64, |a - b| <= atol + rtol * |b| (b: the candidate), and a NaN
    on either side never matches; anything else (integers, bool, complex) must be equal.
    """
    if set(reference) != set(candidate):
        return False
    for name, a in reference.items():
        b = candidate[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_float:
            atol, rtol = tolerance(a.dtype, device_class)
            # isclose's NaN is never close (equal_nan=False), as torch.isclose's
            if not bool(np.isclose(a.floats(), b.floats(), rtol=rtol, atol=atol).all()):
                return False
        elif not np.array_equal(a.values(), b.values()):
            return False
    return True


def load_rows(path: str | os.PathLike[str], rows: list[int] | None = None) -> Rows:
    """The tensors of an output file, optionally only the given dim-0 rows (in that order);
    empty when the file cannot be read or a row lies outside a tensor."""
    try:
        return load_arrays(path, rows)
    except TensorGridError:
        return {}
