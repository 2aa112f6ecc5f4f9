"""The coordinator's measured runs of a stranger's program: a request in a fresh sandboxed child of
its own (not the warm referee, which holds other jobs' programs), its peak resident memory measured
as a node measures its worker's (tensorgrid.sandbox.measured) and the child killed once that passes
a given mark. Intake's memory probes (kinds.*.vetting: the probe's rows, the first prompts, a
training job's first inner step) and the referee's review of a claim that a task's program needs
more than its memory limit (services.verification.memory: a task's rows, its decoding loop; a
training task's inner steps in parts, services.verification.memory_parts) run here; the requests
are those of services.sandboxed, which runs the same work in the warm referee.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import (
    ENTRY,
    OUTPUT,
    PROBE_TIME_S,
    generate_request,
    infer_request,
    probe_request,
    train_for_request,
)
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox import Isolation, WarmSandbox
from tensorgrid.sandbox.measured import Measured, run_measured

__all__ = ["measure_generation", "measure_probe", "measure_rows", "measure_train_part", "measure_train_step"]


def measure_rows(
    rt: Runtime,
    blobs: BlobStore,
    model: Path,
    source: Path,
    batch_size: int,
    input_names: list[str] | None,
    stop_at_bytes: int,
    mark_at_bytes: int = 0,
) -> Measured:
    """reexecute_rows's run of every row of `source` at the job's batch size, in a fresh child
    of its own (not the warm referee: it holds other jobs' programs), its peak resident memory
    measured as a node measures its worker's (tensorgrid.sandbox.measured); the child is killed
    once that passes stop_at_bytes (and when it first passed mark_at_bytes is noted). Its output
    is not kept."""
    request = infer_request(model, source, batch_size, input_names)
    return _measured(rt, blobs, request, (model, source), stop_at_bytes, mark_at_bytes)


def measure_generation(
    rt: Runtime,
    blobs: BlobStore,
    model: Path,
    source: Path,
    decode: dict[str, Any],
    stop_at_bytes: int,
    mark_at_bytes: int = 0,
    time_s: float | None = None,
) -> Measured:
    """regenerate_rows's decoding loop over every prompt of `source`, measured as measure_rows
    measures rows: a fresh child of its own, killed once it holds stop_at_bytes. Its output is not
    kept. time_s: its wall-time limit (default: the referee's; intake's gives it PROBE_TIME_S)."""
    request = generate_request(model, source, decode)
    return _measured(rt, blobs, request, (model, source), stop_at_bytes, mark_at_bytes, time_s)


def measure_probe(
    rt: Runtime,
    blobs: BlobStore,
    model: Path,
    source: Path,
    input_names: list[str],
    batch_size: int,
    stop_at_bytes: int,
) -> Measured:
    """probe_rows in a fresh child of its own, its peak memory measured (intake: a program already
    over its memory limit on the probe's rows is refused); the child is killed once it holds
    stop_at_bytes. The answer, when it gave one, is the probe's (determinism_of reads it)."""
    request = probe_request(model, source, input_names, batch_size)
    return _measured(rt, blobs, request, (model, source), stop_at_bytes, 0, time_s=PROBE_TIME_S)


def measure_train_step(
    rt: Runtime,
    blobs: BlobStore,
    program: Path,
    weights: Path,
    shard: Path,
    settings: dict[str, Any],
    stop_at_bytes: int,
) -> Measured:
    """A training task's first inner step (tensorgrid.training.task.run_first_step: `settings` as
    leased, the round's `weights`, the task's `shard`) in a fresh child of its own, its peak memory
    measured (intake: a program already over its memory limit there is refused); the child is
    killed once it holds stop_at_bytes. It has the probe's time box."""
    request = {
        "op": "train_step",
        "program": str(program),
        "weights": str(weights),
        "shard": str(shard),
        "settings": dict(settings),
    }
    return _measured(rt, blobs, request, (program, weights, shard), stop_at_bytes, 0, time_s=PROBE_TIME_S)


def measure_train_part(
    rt: Runtime,
    blobs: BlobStore,
    program: Path,
    weights: Path,
    shard: Path,
    settings: dict[str, Any],
    state: Path | None,
    out: Path,
    most_steps: int,
    stop_at_bytes: int,
    mark_at_bytes: int = 0,
) -> Measured:
    """One part of a training task as sandboxed.train_task_part runs it in the warm referee (from
    `state`, None: the round's `weights`; the state reached, or the pseudo-gradient once done,
    written to `out`), at most `most_steps` inner steps, in a fresh child of its own, its peak
    memory measured (the referee's review of a training task's out-of-memory claims:
    services.verification.memory_parts); the child is killed once it holds stop_at_bytes. Where
    the part stopped is sandboxed.part_of(answer), when it answered; the inner steps it did before
    it passed mark_at_bytes, Measured.progress (the child writes them as it goes: sandbox_child)."""
    asked = {"most_steps": int(most_steps), "progress": True}  # the steps done, for a part killed mid-way
    request = {**train_for_request(rt, program, weights, shard, settings, state), **asked}
    files = tuple(p for p in (program, weights, shard, state) if p is not None)
    return _measured(rt, blobs, request, files, stop_at_bytes, mark_at_bytes, outputs={OUTPUT: out})


def _measured(
    rt: Runtime,
    blobs: BlobStore,
    request: dict[str, Any],
    inputs: tuple[Path, ...],
    stop_at_bytes: int,
    mark_at_bytes: int,
    time_s: float | None = None,
    outputs: dict[str, Path] | None = None,
) -> Measured:
    """`request` in a fresh sandboxed child of the referee's limits, measured (run_measured);
    outputs: the files its answer writes (WarmSandbox.call's)."""
    scratch = blobs.root / "sandbox"
    scratch.mkdir(exist_ok=True)
    box = WarmSandbox(ENTRY, rt.sandbox, isolation=Isolation(), scratch_root=scratch, lend=True)
    try:
        with rt.other_child(box):  # a coordinator stopping kills it as it kills the referee's
            stops = {"stop_at_bytes": stop_at_bytes, "mark_at_bytes": mark_at_bytes}
            return run_measured(box, request, inputs=inputs, time_s=time_s, outputs=outputs, **stops)
    finally:
        box.close()
