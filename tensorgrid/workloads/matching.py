"""Whether two runs' output rows agree within the tolerance of their dtype and device class
(tolerance.py), and by how much they differ in units of that tolerance.

`rows_match` is the comparison every check makes (the coordinator's spot-checks and referee:
coordinator/services/verification/compare.py); `deviation` measures the same quantity, so the
CUDA calibration (tensorgrid.tools.calibrate_tolerance) reports what the checks would decide.
Tensors are numpy arrays here (tensorgrid.workloads.arrays): no torch needed."""

from __future__ import annotations

import math

import numpy as np

from tensorgrid.workloads.arrays import Array
from tensorgrid.workloads.tolerance import tolerance

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


def deviation(reference: Rows, candidate: Rows) -> float:
    """The largest max|a - b| / (atol + rtol * |b|) over every float element, with the CPU
    tolerance of its dtype: rows_match(reference, candidate, "cpu") holds while this is at most
    1, and with a device class whose factor is F while it is at most F. 0.0 when they are equal;
    inf when no factor would do (other tensors, shapes or dtypes, a NaN on either side, integers
    or bools that differ, a dtype compared exactly)."""
    if set(reference) != set(candidate):
        return math.inf
    worst = 0.0
    for name, a in reference.items():
        b = candidate[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            return math.inf
        if not a.is_float:
            if not np.array_equal(a.values(), b.values()):
                return math.inf
            continue
        x, y = a.floats(), b.floats()
        if bool(np.isnan(x).any() or np.isnan(y).any()):  # a NaN never matches, as in rows_match
            return math.inf
        with np.errstate(invalid="ignore"):  # inf - inf: equal infinities differ by nothing
            diff = np.where(x == y, 0.0, np.abs(x - y))
        if not bool((diff > 0).any()):
            continue
        atol, rtol = tolerance(a.dtype, "cpu")
        bound = atol + rtol * np.abs(y)
        if not bool((bound[diff > 0] > 0).all()):  # a dtype the table compares exactly
            return math.inf
        ratio = np.divide(diff, bound, out=np.zeros_like(diff), where=diff > 0)
        worst = max(worst, float(ratio.max()))
    return worst
