"""Planning a training job: vet its programs and dataset, write the round-0 weights and shards,
and (when its limit is below the referee's cap) measure the memory of its first inner step.

The programs are read statically here (check_program: the archive and its graph, never
deserialized); loading them, checking the starting weights fit and writing the program's own
weights as round 0's happen in the coordinator's sandboxed child (services.sandboxed).
"""

from __future__ import annotations

from pathlib import Path

from coordinator.config import Limits
from coordinator.kinds.training.vetting import vet_first_step
from coordinator.repositories.jobs import NewJob, NewTask
from coordinator.services.blobs import stored
from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import SandboxFailure, vet_training
from coordinator.services.training.planner import job_files, put, round_settings, write_shards
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import SpecError
from tensorgrid.spec import TrainingSpec, check_dataset, task_id_for
from tensorgrid.types import BlobRef
from tensorgrid.workloads.model import check_program
from tensorgrid.workloads.tensorfile import read_header


def plan_training(
    spec: TrainingSpec,
    spec_json: bytes,
    submitter: str,
    sh: str,
    job_id: str,
    rt: Runtime,
    blobs: BlobStore,
    limits: Limits,
    *,
    measure: bool = True,
) -> tuple[NewJob, list[NewTask]]:
    """Vet a training job against its blobs; write its round-0 weights and shards; measure its first
    inner step (vetting.py) unless `measure` is False (intake holds a pass of it: Kind.plan)."""
    train = stored(blobs, spec.train_program, "train_program")
    check_program(train, purpose="training")
    eval_program = None
    if spec.eval_program is not None:
        eval_program = stored(blobs, spec.eval_program, "eval_program")
        check_program(eval_program, purpose="training")
    header = read_header(stored(blobs, spec.dataset, "dataset"))
    check_dataset(spec, header)
    if spec.rounds * spec.workers_per_round > limits.max_tasks_per_job:
        raise SpecError(
            f"rounds × workers_per_round = {spec.rounds * spec.workers_per_round} tasks is over the limit of "
            f"{limits.max_tasks_per_job}"
        )
    parameters, weights_ref = _trial_load(spec, rt, blobs, train, eval_program)
    files = job_files(spec, blobs, parameters)
    shards = write_shards(files, 0, blobs, limits)
    settings = round_settings(spec, 0, weights_ref, shards)
    if measure:
        first = blobs.path_for(shards[0].input.sha256)  # memory at intake (vetting.py)
        vet_first_step(spec, rt, blobs, train, blobs.path_for(weights_ref.sha256), first, settings)
    job = NewJob(
        job_id=job_id,
        submitter=submitter,
        kind=spec.kind,  # create_job gives round 0's tasks this kind too (TASK_KIND)
        spec_json=spec_json,
        spec_hash=sh,
        device=spec.device,
        min_memory_bytes=spec.min_memory_bytes,
        model=spec.train_program,
        settings_json=settings,
        memory_limit_bytes=spec.task_memory_limit_bytes,
        time_limit_ms=spec.task_time_limit_s * 1000,
        max_attempts=spec.max_attempts,
        reward_per_task_wei=spec.reward_per_task_wei,  # the ledger's price: checked against the escrow
    )
    tasks = [NewTask(index=t.slot, task_id=task_id_for(job_id, t.slot), input=t.input, rows=t.rows) for t in shards]
    return job, tasks


def _trial_load(
    spec: TrainingSpec, rt: Runtime, blobs: BlobStore, train: Path, eval_program: Path | None
) -> tuple[frozenset[str], BlobRef]:
    """Load the programs in the sandboxed child: the train program's parameter names and
    round 0's weights (the submitter's, or the program's own, written by the child)."""
    try:
        if spec.initial_weights is not None:
            weights = stored(blobs, spec.initial_weights, "initial_weights")
            return vet_training(rt, blobs, train, weights=weights, eval_program=eval_program), spec.initial_weights
        names: list[frozenset[str]] = []

        def write(out: Path) -> None:
            names.append(vet_training(rt, blobs, train, eval_program=eval_program, out=out))

        ref = put(blobs, write, "weights-")
        return names[0], ref
    except SandboxFailure as e:
        if e.over_limit:
            raise SpecError(
                f"the train program could not be loaded within this coordinator's limits ({e}): "
                "the job was refused, nothing was scheduled"
            ) from None
        raise SpecError(f"the train program cannot be trained: {e}") from None
