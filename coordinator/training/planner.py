"""Blob work of a training job, run on the coordinator's work threads.

Intake: vet the programs and the dataset, write the round-0 weights and shards. Closing a
round: average the accepted pseudo-gradients with the outer step, evaluate the new weights
on the held-out split, and write the next round's shards. Everything derived here (split,
shards, initial weights) is a pure function of the spec and its blobs, so it is recomputed
after a restart instead of being stored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.config import Limits
from coordinator.storage import NewJob, NewTask
from coordinator.training.store import ClosedRound, RoundTask, RoundView
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import BlobError, SpecError, TensorGridError
from tensorgrid.spec import task_id_for
from tensorgrid.training.compression import read_result
from tensorgrid.training.data import DataSplit, plan_split, round_shards, write_rows
from tensorgrid.training.inner import InnerSettings
from tensorgrid.training.objective import load_weights, open_program
from tensorgrid.training.outer import (
    apply_round,
    check_pseudo_gradient,
    evaluate,
    initial_weights,
    parameter_names,
)
from tensorgrid.training.spec import TrainingSpec, check_dataset
from tensorgrid.types import BlobRef
from tensorgrid.workloads.model import check_program
from tensorgrid.workloads.tensorfile import Header, batch_rows, load_tensors, read_header

log = logging.getLogger("tensorgrid.coordinator")


def stored(blobs: BlobStore, ref: BlobRef, what: str) -> Path:
    """The local path of a blob the spec names; SpecError if it is missing or of another size."""
    try:
        have = blobs.ref(ref.sha256)
    except BlobError:
        raise SpecError(f"{what} blob {ref.sha256} is not on the coordinator: upload it first") from None
    if have.size != ref.size:
        raise SpecError(f"{what} blob {ref.sha256} has {have.size} bytes, the spec says {ref.size}")
    return blobs.path_for(ref.sha256)


def _put(blobs: BlobStore, write: Any, prefix: str) -> BlobRef:
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


def job_files(spec: TrainingSpec, blobs: BlobStore) -> JobFiles:
    dataset = stored(blobs, spec.dataset, "dataset")
    header = read_header(dataset)
    split = plan_split(spec, batch_rows(header))
    files = JobFiles(spec, dataset, header, split, parameter_names(stored(blobs, spec.train_program, "train_program")))
    if len(split.heldout):
        files.heldout = blobs.path_for(
            _put(blobs, lambda p: write_rows(dataset, split.heldout, p, header), "heldout-").sha256
        )
    return files


def write_shards(files: JobFiles, round: int, blobs: BlobStore, limits: Limits | None = None) -> list[RoundTask]:
    """Write every worker's shard of a round into the blob store."""
    out = []
    for slot, rows in enumerate(round_shards(files.spec, files.split, round)):
        ref = _put(blobs, lambda p, rows=rows: write_rows(files.dataset, rows, p, files.header), "shard-")
        if limits is not None and ref.size > limits.max_shard_bytes:
            raise SpecError(
                f"a shard of {len(rows)} rows is {ref.size} bytes, over this coordinator's limit of "
                f"{limits.max_shard_bytes}: lower batch_size × inner_steps"
            )
        out.append(RoundTask(slot, ref, len(rows)))
    return out


def plan_training(
    spec: TrainingSpec, spec_json: bytes, submitter: str, sh: str, job_id: str, blobs: BlobStore, limits: Limits
) -> tuple[NewJob, list[NewTask]]:
    """Vet a training job against its blobs; write its round-0 weights and shards."""
    train = stored(blobs, spec.train_program, "train_program")
    check_program(train)
    if spec.eval_program is not None:
        check_program(stored(blobs, spec.eval_program, "eval_program"))
    header = read_header(stored(blobs, spec.dataset, "dataset"))
    check_dataset(spec, header)
    if spec.rounds * spec.workers_per_round > limits.max_tasks_per_job:
        raise SpecError(
            f"rounds × workers_per_round = {spec.rounds * spec.workers_per_round} tasks is over the limit of "
            f"{limits.max_tasks_per_job}"
        )
    try:
        module = open_program(train, _cpu())
        if spec.initial_weights is not None:
            weights = stored(blobs, spec.initial_weights, "initial_weights")
            load_weights(module, load_tensors(weights))
            weights_ref = spec.initial_weights
        else:
            weights_ref = _put(blobs, lambda p: initial_weights(train, p), "weights-")
    except TensorGridError as e:
        raise SpecError(f"the train program cannot be trained: {e}") from None
    files = job_files(spec, blobs)
    shards = write_shards(files, 0, blobs, limits)
    job = NewJob(
        job_id=job_id,
        submitter=submitter,
        kind=spec.kind,  # "training": create_job gives round 0's tasks this kind too (TASK_KIND)
        spec_json=spec_json,
        spec_hash=sh,
        device=spec.device,
        min_memory_bytes=spec.min_memory_bytes,
        model=spec.train_program,
        settings_json=round_settings(spec, 0, weights_ref, shards),
        memory_limit_bytes=spec.task_memory_limit_bytes,
        time_limit_ms=spec.task_time_limit_s * 1000,
        max_attempts=spec.max_attempts,
    )
    tasks = [NewTask(index=t.slot, task_id=task_id_for(job_id, t.slot), input=t.input, rows=t.rows) for t in shards]
    return job, tasks


def _cpu() -> Any:
    import torch

    return torch.device("cpu")


def valid_results(view: RoundView, blobs: BlobStore) -> list[tuple[int, BlobRef]]:
    """The round's results that are well-formed pseudo-gradients for its weights (others are logged)."""
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


def close(view: RoundView, results: list[tuple[int, BlobRef]], files: JobFiles, blobs: BlobStore) -> ClosedRound:
    """Outer step over the results, evaluation, and the next round's shards and settings."""
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
        )
        metrics: dict[str, float | None] = {"loss": None, "accuracy": None}
        if files.heldout is not None:
            program = spec.eval_program or spec.train_program
            metrics = evaluate(blobs.path_for(program.sha256), weights_tmp, files.heldout, spec.loss)
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
        bytes_up=sum(ref.size for _, ref in results),
        weights=weights,
        momentum=momentum,
        next_tasks=tuple(shards),
        next_settings=round_settings(spec, nxt, weights, shards) if shards else "{}",
    )
