"""Comparing re-executed rows with a node's rows, within a tolerance per dtype and device class
(the table and its calibration: tensorgrid/workloads/tolerance.py; either side on CUDA
widens it by CUDA_FACTOR).

Tensors are numpy arrays here (tensorgrid.workloads.arrays): the coordinator compares and
slices outputs without importing torch. The comparison itself is the shared core's
(tensorgrid/workloads/matching.py), so the CUDA calibration tool measures what checks decide."""

from __future__ import annotations

import os

from tensorgrid.errors import TensorGridError
from tensorgrid.workloads.arrays import load_arrays
from tensorgrid.workloads.matching import Rows, rows_match
from tensorgrid.workloads.tolerance import CUDA_FACTOR, TOLERANCES, device_class, tolerance

__all__ = ["CUDA_FACTOR", "TOLERANCES", "Rows", "device_class", "load_rows", "rows_match", "tolerance"]


def load_rows(path: str | os.PathLike[str], rows: list[int] | None = None) -> Rows:
    """The tensors of an output file, optionally only the given dim-0 rows (in that order);
    empty when the file cannot be read or a row lies outside a tensor."""
    try:
        return load_arrays(path, rows)
    except TensorGridError:
        return {}
