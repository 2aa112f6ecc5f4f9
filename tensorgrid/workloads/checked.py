"""An exported program whose input checks run once per input signature (the serving hot path).

A module loaded from a `torch.export` program checks every call's inputs against the
program's input spec and shape ranges in a forward pre-hook (torch.export._unlift): about
70 µs of a small MLP's 160 µs forward pass on this machine, paid by every micro-batch of a
serving replica. That check reads only the number of arguments, their types and their shapes
(torch/_export/utils.py `_check_input_constraints_for_graph`; not dtypes, not values), so its
verdict for one signature holds for every call with that signature. `CheckedProgram` runs the
same check the first time a signature is seen, remembers a pass (never a failure: a refused
signature is checked, and refused, every time), and skips the hook for signatures it passed.

A module without that hook (another torch, a program whose graph calls its own guards) is
called as it is, checks and all.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["CheckedProgram", "MAX_SIGNATURES"]

MAX_SIGNATURES = 256  # passed signatures remembered; past it the memory starts again

try:  # private torch API: torch is pinned (pyproject), and without it nothing is skipped
    from torch.export._unlift import _check_input_constraints_for_module as _check_inputs
except ImportError:  # pragma: no cover - another torch
    _check_inputs = None

Signature = tuple[tuple[int, ...], ...]


class CheckedProgram:
    """Call `module(*tensors)` with its input checks run once per signature of shapes."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.checks = 0  # full checks run (signatures seen for the first time, refusals)
        self._passed: set[Signature] = set()
        self._memo = (
            _check_inputs is not None
            and getattr(module, "validate_inputs", False) is True
            and hasattr(module, "range_constraints")
            and not hasattr(module, "_guards_fn")
        )
        if self._memo:
            # the hook returns at once; __call__ checks instead
            module.validate_inputs = False  # type: ignore[assignment]

    def __call__(self, *args: torch.Tensor) -> Any:
        if self._memo:
            self._check(args)
        return self.module(*args)

    def _check(self, args: tuple[Any, ...]) -> None:
        if not all(type(a) is torch.Tensor for a in args):  # only plain tensors are remembered
            self.checks += 1
            _check_inputs(self.module, args, {})  # type: ignore[misc]
            return
        signature = tuple(tuple(a.shape) for a in args)
        if signature in self._passed:
            return
        self.checks += 1
        _check_inputs(self.module, args, {})  # type: ignore[misc]  # raises: not remembered
        if len(self._passed) >= MAX_SIGNATURES:
            self._passed.clear()
        self._passed.add(signature)
