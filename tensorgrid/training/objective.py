"""What a training step optimizes: batches from a dataset file, the forward, the loss.

Shared by the inner loop, evaluation and the baseline, so all three see the same data
layout: `features` + `labels` (the program takes features, the loss compares its output
with labels), or `tokens` (the program takes tokens[:, :-1] and predicts tokens[:, 1:]).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from tensorgrid.errors import ExecutionError
from tensorgrid.types import ErrorKind
from tensorgrid.workloads.model import load_program
from tensorgrid.workloads.tensorfile import load_tensors

__all__ = ["Batches", "accuracy", "compute_loss", "forward", "load_batches", "load_weights", "open_program"]


class Batches:
    """A dataset file in memory as (inputs, targets), sliced by row positions."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        if set(tensors) == {"tokens"}:
            tokens = tensors["tokens"].long()
            self.inputs, self.targets = tokens[:, :-1], tokens[:, 1:]
        elif set(tensors) == {"features", "labels"}:
            self.inputs, self.targets = tensors["features"], tensors["labels"]
        else:
            raise ExecutionError(
                ErrorKind.INVALID_INPUT,
                f"a training data file holds 'features' + 'labels' or 'tokens', not {sorted(tensors)}",
            )
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise ExecutionError(ErrorKind.INVALID_INPUT, "features and labels have different row counts")

    @property
    def rows(self) -> int:
        return int(self.inputs.shape[0])

    def take(self, positions: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[positions].to(device), self.targets[positions].to(device)

    def span(self, start: int, end: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[start:end].to(device), self.targets[start:end].to(device)


def load_batches(path: str | os.PathLike[str]) -> Batches:
    return Batches(load_tensors(path))


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy weights (keyed by state_dict name) into a loaded program; names must match exactly."""
    expected = module.state_dict()
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise ExecutionError(
            ErrorKind.INVALID_INPUT,
            f"weights do not fit the program: missing {missing[:10]}, unexpected {extra[:10]}",
        )
    for name, value in weights.items():
        if value.shape != expected[name].shape:
            raise ExecutionError(
                ErrorKind.INVALID_INPUT,
                f"weight {name!r} has shape {list(value.shape)}; the program needs {list(expected[name].shape)}",
            )
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(weights[name].to(target.dtype))


def open_program(path: str | os.PathLike[str], device: torch.device) -> torch.nn.Module:
    module = load_program(path, device, purpose="training")
    frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
    if frozen:
        raise ExecutionError(ErrorKind.INVALID_INPUT, f"the training program has frozen parameters {frozen[:5]}")
    return module


def forward(module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    try:
        output = module(inputs)
    except torch.OutOfMemoryError as exc:
        raise ExecutionError(ErrorKind.OUT_OF_MEMORY, f"out of memory running the model: {exc}") from exc
    except Exception as exc:  # a stranger's graph failing is a task failure, not ours
        raise ExecutionError(ErrorKind.PROGRAM_ERROR, f"the model failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(output, torch.Tensor):
        raise ExecutionError(
            ErrorKind.INVALID_INPUT, f"a training program must return one tensor, got {type(output).__name__}"
        )
    return output


def compute_loss(output: torch.Tensor, targets: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean loss of a batch; for cross_entropy the class dimension is the output's last."""
    try:
        if loss == "cross_entropy":
            return F.cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1).long())
        if loss == "mse":
            target = targets.to(output.dtype)
            if target.ndim == 1 and output.ndim == 2 and output.shape[1] == 1:
                target = target.unsqueeze(1)
            return F.mse_loss(output, target)
    except RuntimeError as exc:
        raise ExecutionError(
            ErrorKind.INVALID_INPUT,
            f"{loss} cannot compare output {list(output.shape)} with targets {list(targets.shape)}: {exc}",
        ) from exc
    raise ExecutionError(ErrorKind.INVALID_INPUT, f"unknown loss {loss!r}")


def accuracy(output: torch.Tensor, targets: torch.Tensor) -> int:
    """Number of rows (or tokens) whose argmax over the last dim equals the target."""
    return int((output.argmax(dim=-1) == targets.long()).sum())
