"""Blob work of a training job, run on the coordinator's work threads.

Intake (kinds/training/plan.py) writes the round-0 weights and shards with these. Closing a
round: average the accepted pseudo-gradients with the outer step, evaluate the new weights
on the held-out split, and write the next round's shards. Everything derived here (split,
shards, initial weights) is a pure function of the spec and its blobs, so it is recomputed
after a restart instead of being stored.

The submitter's programs never run in this process: their parameter names and the held-out
evaluation come from the sandboxed child (services.sandboxed). An evaluation that fails
there (the program raised, or hit the referee's time or memory limit) does not fail the job:
the weights the submitter pays for do not depend on it. The round closes with its held-out
metrics unavailable (None) and the reason in its "round" event (eval_error), for the
submitter to see.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.config import Limits
from coordinator.repositories.training.rounds import ClosedRound, RoundTask, RoundView
from coordinator.services.blobs import stored
from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import SandboxFailure, evaluate_weights, vet_training
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import SpecError, TensorGridError
from tensorgrid.spec import TrainingSpec
from tensorgrid.types import BlobRef
from tensorgrid.workloads.tensorfile import Header, batch_rows, load_tensors, read_header

# tensorgrid.training imports torch, so it is imported where a training job needs it: a coordinator
# imports torch only once it runs one.
if TYPE_CHECKING:
    from tensorgrid.training.data import DataSplit

log = logging.getLogger("tensorgrid.coordinator")


def put(blobs: BlobStore, write: Any, prefix: str) -> BlobRef:
    """Write a file with write(path) into a temp path, then store it by content."""
    tmp = blobs.temp_path(prefix)
    try:
        write(tmp)
        return blobs.put_file(tmp)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".tmp").unlink(missing_ok=True)


def round_settings(spec: TrainingSpec, round: int, weights: BlobRef, shards: list[RoundTask]) -> str:
    """Settings shared by a round's tasks. A task's own seed is found by its shard's hash, so one
    settings object serves the whole round (create_job stamps one on every task of round 0)."""
    from tensorgrid.training.inner import InnerSettings

    inner = InnerSettings.for_task(spec, round, 0).to_dict()
    seeds = {t.input.sha256: InnerSettings.for_task(spec, round, t.slot).seed for t in shards}
    settings = {
        "inner": inner,
        "seeds": seeds,
        "round": round,
        "compression": spec.compression,
        "device": spec.device,
        "blobs": {"weights": {"sha256": weights.sha256, "size": weights.size}},
    }
    return json.dumps(settings, sort_keys=True)


@dataclass
class JobFiles:
    """What a job's rounds keep needing, derived once per coordinator process."""

    spec: TrainingSpec
    dataset: Path
    header: Header
    split: DataSplit
    parameters: frozenset[str]
    heldout: Path | None = None


def job_files(spec: TrainingSpec, blobs: BlobStore, parameters: frozenset[str]) -> JobFiles:
    """The job's files; `parameters`: its train program's parameter names (program_parameters)."""
    from tensorgrid.training.data import plan_split, write_rows

    dataset = stored(blobs, spec.dataset, "dataset")
    header = read_header(dataset)
    split = plan_split(spec, batch_rows(header))
    files = JobFiles(spec, dataset, header, split, parameters)
    if len(split.heldout):
        files.heldout = blobs.path_for(
            put(blobs, lambda p: write_rows(dataset, split.heldout, p, header), "heldout-").sha256
        )
    return files


def program_parameters(rt: Runtime, spec: TrainingSpec, blobs: BlobStore) -> frozenset[str]:
    """The train program's parameter names, read by loading it in the sandboxed child."""
    return vet_training(rt, blobs, stored(blobs, spec.train_program, "train_program"))


def write_shards(files: JobFiles, round: int, blobs: BlobStore, limits: Limits | None = None) -> list[RoundTask]:
    """Write every worker's shard of a round into the blob store."""
    from tensorgrid.training.data import round_shards, write_rows

    out = []
    for slot, rows in enumerate(round_shards(files.spec, files.split, round)):
        ref = put(blobs, lambda p, rows=rows: write_rows(files.dataset, rows, p, files.header), "shard-")
        if limits is not None and ref.size > limits.max_shard_bytes:
            raise SpecError(
                f"a shard of {len(rows)} rows is {ref.size} bytes, over this coordinator's limit of "
                f"{limits.max_shard_bytes}: lower batch_size × inner_steps"
            )
        out.append(RoundTask(slot, ref, len(rows)))
    return out


def valid_results(view: RoundView, blobs: BlobStore) -> list[tuple[int, BlobRef]]:
    """The round's results that are well-formed pseudo-gradients for its weights (others are logged)."""
    from tensorgrid.training.compression import read_result
    from tensorgrid.training.outer import check_pseudo_gradient

    weights = load_tensors(blobs.path_for(view.weights.sha256))
    good = []
    for slot, ref in view.done:
        try:
            check_pseudo_gradient(read_result(blobs.path_for(ref.sha256)), weights)
        except (TensorGridError, OSError) as e:
            log.warning("job %s round %d: dropping the result of slot %d: %s", view.job_id[:12], view.round, slot, e)
            continue
        good.append((slot, ref))
    return good


def close(
    rt: Runtime, view: RoundView, results: list[tuple[int, BlobRef]], files: JobFiles, blobs: BlobStore
) -> ClosedRound:
    """Outer step over the results, evaluation, and the next round's shards and settings."""
    from tensorgrid.training.outer import apply_round

    spec = files.spec
    weights_tmp, momentum_tmp = blobs.temp_path("weights-"), blobs.temp_path("momentum-")
    try:
        outcome = apply_round(
            blobs.path_for(view.weights.sha256),
            blobs.path_for(view.momentum.sha256) if view.momentum else None,
            [blobs.path_for(ref.sha256) for _, ref in results],
            spec.outer_optimizer,
            files.parameters,
            weights_tmp,
            momentum_tmp,
            plain=spec.plain_round(view.round),
        )
        metrics, eval_error = _evaluate(rt, view, files, blobs, weights_tmp)
        weights, momentum = blobs.put_file(weights_tmp), blobs.put_file(momentum_tmp)
    finally:
        for p in (weights_tmp, momentum_tmp):
            p.unlink(missing_ok=True)
    nxt = view.round + 1
    shards = write_shards(files, nxt, blobs) if nxt < spec.rounds else []
    return ClosedRound(
        round=view.round,
        slots=tuple(slot for slot, _ in results),
        rows=outcome.rows,
        train_loss=outcome.mean_final_loss,
        eval_loss=metrics["loss"],
        eval_accuracy=metrics["accuracy"],
        eval_error=eval_error,
        bytes_up=sum(ref.size for _, ref in results),
        weights=weights,
        momentum=momentum,
        next_tasks=tuple(shards),
        next_settings=round_settings(spec, nxt, weights, shards) if shards else "{}",
    )


def _evaluate(
    rt: Runtime, view: RoundView, files: JobFiles, blobs: BlobStore, weights: Path
) -> tuple[dict[str, float | None], str | None]:
    """The held-out metrics of the new weights (None without a held-out split), and why they
    are unavailable if the sandboxed evaluation failed."""
    unavailable: dict[str, float | None] = {"loss": None, "accuracy": None}
    if files.heldout is None:
        return unavailable, None
    spec = files.spec
    program = blobs.path_for((spec.eval_program or spec.train_program).sha256)
    try:
        return evaluate_weights(rt, blobs, program, weights, files.heldout, spec.loss), None
    except SandboxFailure as e:
        log.warning("job %s round %d: held-out evaluation failed: %s", view.job_id[:12], view.round, e)
        return unavailable, f"held-out evaluation failed ({e.kind}): {e}"[:500]
