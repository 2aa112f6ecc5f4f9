"""The whole training protocol in one process: the reference for coordinator and node wiring.

Each round does what the grid does, with files where the grid has blobs:
  coordinator: plan the split once (data.plan_split), write the held-out file; per round,
      write each worker's shard (data.round_shards + data.write_rows) and build its
      settings (InnerSettings.for_task(spec, round, worker));
  node:        inner.run_inner(train program, round weights, shard, settings) and
      inner.write_result(result, path, spec.compression);
  coordinator: outer.apply_round(weights_r, momentum_r, results, ...) → weights_{r+1},
      momentum_{r+1}; then outer.evaluate on the held-out file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tensorgrid.spec import TrainingSpec, check_dataset
from tensorgrid.training.data import plan_split, round_shards, write_rows
from tensorgrid.training.inner import InnerSettings, run_inner, write_result
from tensorgrid.training.outer import apply_round, evaluate, initial_weights, parameter_names
from tensorgrid.workloads.tensorfile import batch_rows, read_header

__all__ = ["LocalRun", "run_local"]


@dataclass
class LocalRun:
    """Paths a local run produced and its per-round history."""

    weights_path: Path
    heldout_path: Path | None
    history: list[dict[str, float | None]] = field(default_factory=list)


def run_local(
    spec: TrainingSpec,
    train_program: str | os.PathLike[str],
    dataset: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    *,
    eval_program: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    eval_every: int = 0,
) -> LocalRun:
    """Run spec.rounds rounds with spec.workers_per_round simulated workers, all in this process."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    header = read_header(dataset)
    check_dataset(spec, header)
    split = plan_split(spec, batch_rows(header))
    heldout = None
    if len(split.heldout):
        heldout = work / "heldout.safetensors"
        write_rows(dataset, split.heldout, heldout, header)
    current = work / "weights_00000.safetensors"
    if weights is None:
        initial_weights(train_program, current)
    else:
        current.write_bytes(Path(weights).read_bytes())
    momentum = work / "momentum_00000.safetensors"
    params = parameter_names(train_program)
    run = LocalRun(weights_path=current, heldout_path=heldout)
    for r in range(spec.rounds):
        results = []
        for w, rows in enumerate(round_shards(spec, split, r)):
            shard = work / f"shard_{r:05d}_{w:03d}.safetensors"
            write_rows(dataset, rows, shard, header)
            result = run_inner(train_program, current, shard, InnerSettings.for_task(spec, r, w))
            results.append(work / f"result_{r:05d}_{w:03d}.safetensors")
            write_result(result, results[-1], spec.compression)
            shard.unlink()
        nxt, nxt_m = work / f"weights_{r + 1:05d}.safetensors", work / f"momentum_{r + 1:05d}.safetensors"
        outcome = apply_round(
            current, momentum, results, spec.outer_optimizer, params, nxt, nxt_m, plain=spec.plain_round(r)
        )
        for p in results:
            p.unlink()
        current, momentum = nxt, nxt_m
        entry: dict[str, float | None] = {"round": r, "train_loss": outcome.mean_final_loss}
        last = r == spec.rounds - 1
        if heldout is not None and (last or (eval_every and (r + 1) % eval_every == 0)):
            metrics = evaluate(eval_program or train_program, current, heldout, spec.loss)
            entry.update({"eval_loss": metrics["loss"], "eval_accuracy": metrics["accuracy"]})
        run.history.append(entry)
    run.weights_path = current
    return run
