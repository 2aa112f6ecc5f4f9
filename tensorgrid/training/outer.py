"""The coordinator's side of a round: average pseudo-gradients, take the outer step, evaluate.

Outer step (Nesterov SGD as torch.optim.SGD(nesterov=True, dampening=0) computes it), for
every parameter with averaged pseudo-gradient g and momentum buffer m (zeros at first):
    m ← μ·m + g;   θ ← θ − lr·(g + μ·m)
A plain round (the spec's first outer_plain_rounds) takes θ ← θ − g instead, the mean of the
workers' weights, and leaves the momentum at zero: Nesterov's extrapolation then starts from
weights past the first, fastest-changing rounds.
Floating buffers that are not parameters (e.g. BatchNorm running statistics) are averaged
instead: θ ← θ − g, i.e. the row-weighted mean of the workers' local values. Integer
entries (num_batches_tracked) keep their global value.

Each round reads the weights and momentum files of round r and writes those of round r+1
(atomically, via a rename), so a restarted coordinator resumes from the last files written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tensorgrid.errors import InvalidTensorFile
from tensorgrid.spec import NesterovSGD
from tensorgrid.training.compression import PseudoGradient, read_result
from tensorgrid.training.objective import accuracy, compute_loss, forward, load_batches, load_weights
from tensorgrid.workloads.inference import pick_device
from tensorgrid.workloads.model import load_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors

__all__ = [
    "RoundOutcome",
    "apply_round",
    "average",
    "check_pseudo_gradient",
    "evaluate",
    "initial_weights",
    "outer_step",
    "parameter_names",
]

Tensors = dict[str, torch.Tensor]


def initial_weights(program_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> None:
    """Write a program's own weights (its state_dict) as the round-0 weights file."""
    save_tensors(dict(load_program(program_path, purpose="training").state_dict()), out_path)


def parameter_names(program_path: str | os.PathLike[str]) -> frozenset[str]:
    """Names of the program's trainable parameters (the entries that get Nesterov momentum)."""
    return frozenset(name for name, _ in load_program(program_path, purpose="training").named_parameters())


def check_pseudo_gradient(result: PseudoGradient, weights: Mapping[str, torch.Tensor]) -> None:
    """A result must carry exactly one float32 tensor per floating weight, of the same shape."""
    expected = {n: t.shape for n, t in weights.items() if t.is_floating_point()}
    got = {n: t.shape for n, t in result.tensors.items()}
    if set(got) != set(expected):
        raise InvalidTensorFile(
            f"pseudo-gradient names differ from the weights: missing {sorted(set(expected) - set(got))[:5]}, "
            f"unexpected {sorted(set(got) - set(expected))[:5]}"
        )
    for name, shape in expected.items():
        if got[name] != shape:
            raise InvalidTensorFile(f"pseudo-gradient {name!r} has shape {list(got[name])}, weights {list(shape)}")


def average(results: Sequence[PseudoGradient]) -> Tensors:
    """Mean of the pseudo-gradients, each weighted by the rows of its shard."""
    if not results:
        raise ValueError("no pseudo-gradients to average")
    total = sum(r.rows for r in results)
    names = results[0].tensors.keys()
    return {
        name: sum((r.tensors[name].double() * (r.rows / total) for r in results), torch.zeros(())).float()
        for name in names
    }


def outer_step(
    weights: Mapping[str, torch.Tensor],
    delta: Mapping[str, torch.Tensor],
    momentum: Mapping[str, torch.Tensor] | None,
    optimizer: NesterovSGD,
    parameters: Iterable[str],
) -> tuple[Tensors, Tensors]:
    """Apply one outer step; return (new weights, new momentum). See the module docstring."""
    params = set(parameters)
    new_weights: Tensors = {}
    new_momentum: Tensors = {}
    mu, lr = optimizer.momentum, optimizer.lr
    for name, theta in weights.items():
        if not theta.is_floating_point():
            new_weights[name] = theta.clone()
            continue
        g = delta[name].to(torch.float32)
        if name in params:
            m = momentum[name].float() if momentum is not None and name in momentum else torch.zeros_like(g)
            m = mu * m + g
            new_momentum[name] = m
            new_weights[name] = (theta.float() - lr * (g + mu * m)).to(theta.dtype)
        else:
            new_weights[name] = (theta.float() - g).to(theta.dtype)
    return new_weights, new_momentum


@dataclass(frozen=True)
class RoundOutcome:
    """What one aggregation did: workers and rows used, mean of their final inner losses."""

    workers: int
    rows: int
    mean_final_loss: float


def apply_round(
    weights_path: str | os.PathLike[str],
    momentum_path: str | os.PathLike[str] | None,
    result_paths: Sequence[str | os.PathLike[str]],
    optimizer: NesterovSGD,
    parameters: Iterable[str],
    out_weights_path: str | os.PathLike[str],
    out_momentum_path: str | os.PathLike[str],
    *,
    plain: bool = False,
) -> RoundOutcome:
    """Read round r's weights, momentum (None/missing at round 0) and verified results; write r+1's.
    plain: average instead of the optimizer's step, momentum zero (TrainingSpec.plain_round)."""
    weights = load_tensors(weights_path)
    momentum = load_tensors(momentum_path) if momentum_path is not None and Path(momentum_path).exists() else None
    results = [read_result(p) for p in result_paths]
    for result in results:
        check_pseudo_gradient(result, weights)
    if plain:
        new_weights, new_momentum = outer_step(weights, average(results), None, NesterovSGD(1.0, 0.0), parameters)
        new_momentum = {name: torch.zeros_like(m) for name, m in new_momentum.items()}
    else:
        new_weights, new_momentum = outer_step(weights, average(results), momentum, optimizer, parameters)
    _save_atomically(new_momentum, out_momentum_path)
    _save_atomically(new_weights, out_weights_path)
    return RoundOutcome(
        workers=len(results),
        rows=sum(r.rows for r in results),
        mean_final_loss=sum(r.losses[-1] for r in results) / len(results),
    )


def _save_atomically(tensors: Tensors, path: str | os.PathLike[str]) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    save_tensors(tensors, tmp)
    os.replace(tmp, target)


def evaluate(
    program_path: str | os.PathLike[str],
    weights: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    heldout_path: str | os.PathLike[str],
    loss: str,
    *,
    batch_size: int = 1024,
    device: str = "cpu",
) -> dict[str, float | None]:
    """Held-out {"loss", "accuracy"} (accuracy None for mse) of the weights under a program.

    Prefer the eval-mode program; a train-mode one still works (dropout then stays on, with a
    fixed seed so the numbers are reproducible).
    """
    target = pick_device(device)
    module = load_program(program_path, target, purpose="training")
    values = load_tensors(weights) if isinstance(weights, str | os.PathLike) else dict(weights)
    load_weights(module, values)
    data = load_batches(heldout_path)
    if data.rows == 0:
        raise InvalidTensorFile("the held-out file has no rows")
    total_loss, correct, counted = 0.0, 0, 0
    with torch.no_grad(), torch.random.fork_rng(devices=[target] if target.type == "cuda" else []):
        torch.manual_seed(0)
        for start in range(0, data.rows, batch_size):
            inputs, targets = data.span(start, start + batch_size, target)
            output = forward(module, inputs)
            rows = inputs.shape[0]
            total_loss += float(compute_loss(output, targets, loss)) * rows
            if loss == "cross_entropy":
                correct += accuracy(output, targets)
                counted += targets.numel()
    return {
        "loss": total_loss / data.rows,
        "accuracy": correct / counted if loss == "cross_entropy" else None,
    }
