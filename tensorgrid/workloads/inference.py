"""Run an exported program over a safetensors file of inputs, in row order.

This is what a node's child process runs per shard and what the local baseline runs, so it
stays dependency-light (torch + safetensors, no grpc). On one machine with one thread count
the same call gives bit-identical outputs: batches run in row order, nothing is sampled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from tensorgrid.errors import ExecutionError, InvalidTensorFile, TensorGridError
from tensorgrid.types import ErrorKind
from tensorgrid.workloads.model import load_program
from tensorgrid.workloads.tensorfile import batch_rows, load_tensors, read_header, save_tensors, shared_rows

__all__ = ["InferenceStats", "forward_rows", "infer_tensors", "pick_device", "run_inference"]


@dataclass(frozen=True)
class InferenceStats:
    """Rows processed and wall-clock seconds spent in forward passes."""

    rows: int
    seconds: float


def pick_device(preferred: str = "auto") -> torch.device:
    """Resolve "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N"."""
    if preferred == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preferred)
    except RuntimeError:
        raise TensorGridError(f"unknown device {preferred!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise TensorGridError(f"device {preferred!r} is not supported; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise TensorGridError(f"device {preferred!r} was requested but this machine has no usable CUDA GPU")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise TensorGridError(
            f"device {preferred!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)"
        )
    return device


def run_inference(
    model_path: str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    input_names: list[str] | None = None,
    batch_size: int = 0,
    device: str = "auto",
    module: torch.nn.Module | None = None,
) -> InferenceStats:
    """Run the program at model_path over every row of input_path; save outputs to output_path.

    The model gets the tensors named in input_names (default: all, sorted by name) as
    positional arguments, batch_size rows at a time (0 = all rows at once), under no_grad.
    Outputs are saved as "output" (one tensor), "output_0".. (a sequence) or the dict keys,
    concatenated along dim 0 in row order. A caller that runs one program many times may pass
    it already loaded (from model_path, on the same device) as `module`.
    """
    if batch_size < 0:
        raise InvalidTensorFile(f"batch_size must be 0 (all rows) or positive, got {batch_size}")
    header = read_header(input_path)
    names = sorted(header.tensors) if input_names is None else list(input_names)
    rows = batch_rows(header, names)
    if rows == 0:
        raise InvalidTensorFile("the input file has no rows to run")
    target = pick_device(device)
    if module is None:
        module = load_program(model_path, target)
    tensors = load_tensors(input_path)
    started = time.perf_counter()
    outputs = _run_rows(
        module, [tensors[name] for name in names], rows, rows if batch_size == 0 else batch_size, target
    )
    seconds = time.perf_counter() - started
    save_tensors(outputs, output_path)
    return InferenceStats(rows=rows, seconds=seconds)


def infer_tensors(
    module: Callable[..., object], tensors: Mapping[str, torch.Tensor], *, input_names: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """run_inference with batch_size 0 (all rows in one forward pass) on CPU, over tensors
    already loaded: the same checks of names and rows, the same outputs, no files."""
    names = sorted(tensors) if input_names is None else list(input_names)
    rows = shared_rows({name: tuple(t.shape) for name, t in tensors.items()}, names)
    if rows == 0:
        raise InvalidTensorFile("the input file has no rows to run")
    return _run_rows(module, [tensors[name] for name in names], rows, rows, torch.device("cpu"))


def _run_rows(
    module: Callable[..., object], inputs: list[torch.Tensor], rows: int, step: int, target: torch.device
) -> dict[str, torch.Tensor]:
    """The forward passes over `rows` rows of `inputs`, `step` at a time, in row order; outputs joined."""
    pieces: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for start in range(0, rows, step):
            batch = [t[start : start + step].to(target) for t in inputs]
            named = forward_rows(module, batch)
            if pieces and set(named) != set(pieces):
                raise ExecutionError(ErrorKind.PROGRAM_ERROR, "the model's output names changed between batches")
            for key, value in named.items():
                pieces.setdefault(key, []).append(value.to("cpu"))
    return {key: torch.cat(parts, dim=0) for key, parts in pieces.items()}


def forward_rows(module: Callable[..., object], batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """One forward pass over a batch of rows (call under no_grad): its outputs named as the
    output file names them, each checked to hold one row per input row."""
    return _named_outputs(_forward(module, batch), batch[0].shape[0])


def _forward(module: Callable[..., object], batch: list[torch.Tensor]) -> object:
    try:
        return module(*batch)
    except torch.OutOfMemoryError as exc:
        raise ExecutionError(ErrorKind.OUT_OF_MEMORY, f"out of memory running the model: {exc}") from exc
    except Exception as exc:  # any failure inside a stranger's graph is a task failure, not ours
        raise ExecutionError(ErrorKind.PROGRAM_ERROR, f"the model failed: {type(exc).__name__}: {exc}") from exc


def _named_outputs(outputs: object, rows: int) -> dict[str, torch.Tensor]:
    """Name a forward's outputs and check each has one row per input row."""
    if isinstance(outputs, torch.Tensor):
        named = {"output": outputs}
    elif isinstance(outputs, Sequence) and not isinstance(outputs, str):
        named = {f"output_{i}": value for i, value in enumerate(outputs)}
    elif isinstance(outputs, Mapping):
        named = {str(key): value for key, value in outputs.items()}
    else:
        raise ExecutionError(ErrorKind.PROGRAM_ERROR, f"the model returned {type(outputs).__name__}; expected tensors")
    for key, value in named.items():
        if not isinstance(value, torch.Tensor):
            raise ExecutionError(ErrorKind.PROGRAM_ERROR, f"model output {key!r} is not a tensor")
        if value.ndim == 0 or value.shape[0] != rows:
            raise ExecutionError(
                ErrorKind.PROGRAM_ERROR,
                f"model output {key!r} has shape {list(value.shape)}; it needs one row per input row "
                f"({rows}) to be split and reassembled",
            )
    return named
