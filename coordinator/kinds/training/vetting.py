"""Memory at intake for a training job (coordinator.kinds.memory): when measures_memory says so (a
limit below the referee's cap, tasks that may run on CPU), the first inner step of round 0's first
task runs in a fresh child of its own after the trial load (plan.py), its peak resident memory
measured, and the job is refused past ReviewSettings.over_limit × its task_memory_limit_bytes,
naming the limit and the peak.

A training task's memory peaks at its first step: it then holds the weights, their gradients, the
optimizer's moments and one batch's activations, as every later step does. So the first step, from
round 0's weights on that task's own shard with its leased settings, is a tight lower bound of what
every CPU node's run of a task holds (tensorgrid.training.task.run_first_step), at the cost of one
step, not a task. The step runs in plan, where round 0's weights and shards exist, so intake holds
the submitter's validation slot over plan and vet for such a job (Kind.vet_is_measured).
"""

from __future__ import annotations

import json
from pathlib import Path

from coordinator.kinds.memory import can_measure, measured_run, measures_memory, refuse_failure
from coordinator.services.measured import measure_train_step
from coordinator.services.runtime import Runtime
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox.measured import Measured
from tensorgrid.spec import TrainingSpec


def probes_memory(spec: object, rt: Runtime) -> bool:
    """Whether intake runs the job's first inner step in a fresh measured child (see the module)."""
    return isinstance(spec, TrainingSpec) and measures_memory(spec, rt) and can_measure()


def vet_first_step(
    spec: TrainingSpec, rt: Runtime, blobs: BlobStore, program: Path, weights: Path, shard: Path, settings: str
) -> None:
    """Run round 0's first task's first inner step (`settings`: the round's, as planned) in a fresh
    measured child when probes_memory says so (blocking, the probe's time box); SpecError past its
    memory limit, naming the limit and the peak, or when the step fails to run at all."""
    if not probes_memory(spec, rt):
        return
    what = f"intake's run of the first inner step of its first task (round 0's weights, {spec.batch_size} rows)"
    limit, cap = spec.task_memory_limit_bytes, rt.sandbox.memory_bytes

    def run(stop: int) -> Measured:
        return measure_train_step(rt, blobs, program, weights, shard, json.loads(settings), stop)

    m = measured_run(limit, cap, what, run)
    refuse_failure(m, limit, cap, what, program="train program", does="train")
