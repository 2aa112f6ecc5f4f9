"""Planning a training job: vet its programs and dataset, write the round-0 weights and shards."""

from __future__ import annotations

from typing import Any

import torch

from coordinator.config import Limits
from coordinator.repositories.jobs import NewJob, NewTask
from coordinator.services.blobs import stored
from coordinator.services.training.planner import job_files, put, round_settings, write_shards
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import SpecError, TensorGridError
from tensorgrid.spec import TrainingSpec, check_dataset, task_id_for
from tensorgrid.training.objective import load_weights, open_program
from tensorgrid.training.outer import initial_weights
from tensorgrid.workloads.model import check_program
from tensorgrid.workloads.tensorfile import load_tensors, read_header


def plan_training(
    spec: TrainingSpec, spec_json: bytes, submitter: str, sh: str, job_id: str, blobs: BlobStore, limits: Limits
) -> tuple[NewJob, list[NewTask]]:
    """Vet a training job against its blobs; write its round-0 weights and shards."""
    train = stored(blobs, spec.train_program, "train_program")
    check_program(train, purpose="training")
    if spec.eval_program is not None:
        check_program(stored(blobs, spec.eval_program, "eval_program"), purpose="training")
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
            weights_ref = put(blobs, lambda p: initial_weights(train, p), "weights-")
    except TensorGridError as e:
        raise SpecError(f"the train program cannot be trained: {e}") from None
    files = job_files(spec, blobs)
    shards = write_shards(files, 0, blobs, limits)
    job = NewJob(
        job_id=job_id,
        submitter=submitter,
        kind=spec.kind,  # create_job gives round 0's tasks this kind too (TASK_KIND)
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
    return torch.device("cpu")
