"""The honest comparison: one process, plain AdamW, the same rows, plus communication costs.

The baseline is what synchronous data-parallel training (DDP) over the same workers would
compute: every step it trains on the concatenation of the workers' step-s mini-batches, so
it sees exactly the rows the grid saw, in the same order, with W·B rows per step and
rounds·H steps. (Pass batch_size to re-chunk the same row stream differently.)

Communication, per worker and per round (H inner steps):
  * grid: the worker uploads one compressed pseudo-gradient (compressed_bytes: P·{4,2,1}
    bytes for none/fp16/int8, plus a 4-byte scale per tensor for int8);
  * DDP: a ring all-reduce of fp32 gradients every step sends 2·(W−1)/W · P · 4 bytes per
    worker, so H steps send H · 2·(W−1)/W · 4P bytes.
  ratio = DDP bytes / grid bytes. Downloads are symmetric for both (the grid's new global
  weights, fp32, once per round; the all-reduce's receive half every step) and left out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from tensorgrid.spec import TrainingSpec
from tensorgrid.training.compression import compressed_bytes
from tensorgrid.training.data import derive_seed, plan_split, round_shards
from tensorgrid.training.objective import compute_loss, forward, load_batches, load_weights, open_program
from tensorgrid.training.schedule import scheduled_lr
from tensorgrid.workloads.tensorfile import load_tensors

__all__ = ["BaselineResult", "Communication", "communication", "run_baseline", "sample_stream"]


@dataclass(frozen=True)
class BaselineResult:
    weights: dict[str, torch.Tensor]
    losses: list[float]
    samples: int


def sample_stream(spec: TrainingSpec, dataset_rows: int) -> np.ndarray:
    """Dataset rows in the order the grid's rounds consume them (round, step, worker, row)."""
    split = plan_split(spec, dataset_rows)
    b, h = spec.batch_size, spec.inner_steps
    parts: list[np.ndarray] = []
    for r in range(spec.rounds):
        shards = np.stack(round_shards(spec, split, r)).reshape(spec.workers_per_round, h, b)
        parts.append(shards.transpose(1, 0, 2).reshape(-1))
    return np.concatenate(parts)


def run_baseline(
    train_program_path: str | os.PathLike[str],
    weights_path: str | os.PathLike[str],
    dataset_path: str | os.PathLike[str],
    spec: TrainingSpec,
    *,
    batch_size: int | None = None,
    lr: float | None = None,
) -> BaselineResult:
    """Train with AdamW (the spec's inner hyperparameters, warm-up included, unless lr is given) on the
    grid's rows."""
    batch = batch_size or spec.batch_size * spec.workers_per_round
    opt = spec.inner_optimizer
    device = torch.device("cpu")
    module = open_program(train_program_path, device)
    load_weights(module, load_tensors(weights_path))
    data = load_batches(dataset_path)
    stream = torch.from_numpy(sample_stream(spec, data.rows))
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=lr or opt.lr, betas=opt.betas, weight_decay=opt.weight_decay, eps=opt.eps,
        foreach=False,
    )  # fmt: skip
    losses: list[float] = []
    warmup, final = spec.inner_warmup_steps or 0, spec.inner_final_lr
    if final is not None and lr is not None:  # another peak lr: the same decay, in proportion
        final *= lr / opt.lr
    steps = math.ceil(len(stream) / batch)
    with torch.random.fork_rng(devices=[]):
        for step, start in enumerate(range(0, len(stream), batch)):
            # the grid's tasks warm up from a fresh AdamW each round, the baseline once, at its start;
            # the cosine (inner_final_lr) runs over all steps in both
            if warmup or final is not None:
                rate = scheduled_lr(lr or opt.lr, step, warmup_steps=warmup, final_lr=final, position=step, total=steps)
                for group in optimizer.param_groups:
                    group["lr"] = rate
            inputs, targets = data.take(stream[start : start + batch], device)
            torch.manual_seed(derive_seed(spec.seed, "baseline", step))
            loss = compute_loss(forward(module, inputs), targets, spec.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    weights = {n: t.detach().clone() for n, t in module.state_dict().items()}
    return BaselineResult(weights=weights, losses=losses, samples=len(stream))


@dataclass(frozen=True)
class Communication:
    """Bytes one worker sends per round: the grid's pseudo-gradient vs DDP's all-reduces."""

    parameters: int
    grid_bytes_per_round: int
    allreduce_bytes_per_round: int

    @property
    def ratio(self) -> float:
        """How many times fewer bytes the grid sends (0 with one worker: DDP then sends nothing)."""
        return self.allreduce_bytes_per_round / self.grid_bytes_per_round

    def as_dict(self) -> dict[str, float | int]:
        return {
            "parameters": self.parameters,
            "grid_bytes_per_round": self.grid_bytes_per_round,
            "allreduce_bytes_per_round": self.allreduce_bytes_per_round,
            "ratio": self.ratio,
        }


def communication(
    weights: Mapping[str, torch.Tensor], parameters: frozenset[str] | set[str], spec: TrainingSpec
) -> Communication:
    """Per-worker upload per round for the grid (compressed) and for a ring all-reduce per step."""
    shapes = {n: tuple(t.shape) for n, t in weights.items() if t.is_floating_point()}
    p = sum(math.prod(shapes[n]) for n in parameters)
    w = spec.workers_per_round
    allreduce = spec.inner_steps * (2 * (w - 1) * p * 4) // w
    return Communication(
        parameters=p,
        grid_bytes_per_round=compressed_bytes(shapes, spec.compression),
        allreduce_bytes_per_round=allreduce,
    )
