"""The determinism contract at intake: a program whose output rows are not independent of
each other is refused before any node runs it (tensorgrid.workloads.determinism probes it).
So is a program that needs more than its task's time limit (too_slow) or, on the probe's rows
already, more than its task's memory limit (over_memory).

The probe runs the submitter's graph in the coordinator's sandboxed child
(services.sandboxed: no key, no network, bounded time and memory), never in this process.

Memory at intake (coordinator.kinds.memory): when measures_memory says so the probe runs instead
in a fresh child of its own, its peak resident memory measured, and the job is refused past
ReviewSettings.over_limit × its task_memory_limit_bytes, naming the limit and the peak. Its rows
include a shard's first (at most MAX_BATCH rows, and 1% of the job's, at the job's batch size or
smaller), so a CPU node's run of any task holds at least as much. Where no /proc can be read, the
probe runs in the warm child as before.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from coordinator.config import ReviewSettings
from coordinator.kinds.memory import can_measure, measured_run, measures_memory, out_of_cap
from coordinator.services.blobs import stored
from coordinator.services.measured import measure_probe
from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import determinism_of, probe_rows
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import SpecError
from tensorgrid.sandbox.measured import Measured
from tensorgrid.sandbox.oneshot import OUT_OF_MEMORY, SandboxFailure
from tensorgrid.spec import InferenceSpec
from tensorgrid.workloads import tensorfile
from tensorgrid.workloads.rowcontract import MAX_BATCH, Determinism, budget_batch

log = logging.getLogger("tensorgrid.coordinator.intake")
PROBE = "intake's probe of the first rows of its first shard"  # what a refusal names


def probe_program(spec: InferenceSpec, rt: Runtime, blobs: BlobStore) -> Determinism:
    """Probe the job's program on the first rows of its first shard (blocking, bounded, and
    sized to the job: budget_batch); measured for memory when measures_memory says so, and
    refused (SpecError) past its memory limit (over_memory)."""
    src = stored(blobs, spec.inputs, "inputs")
    header = tensorfile.read_header(src)
    total = tensorfile.batch_rows(header)
    rows = min(total, spec.shard_rows, spec.batch_size or MAX_BATCH, budget_batch(total))
    tmp = blobs.temp_path("probe-")
    try:
        tensorfile.gather_rows(src, list(range(rows)), tmp)
        model = stored(blobs, spec.model, "model")
        if not (measures_memory(spec, rt) and can_measure()):
            return probe_rows(rt, blobs, model, tmp, list(spec.input_names), spec.batch_size)
        return _measured_probe(spec, rt, blobs, model, tmp, rows)
    finally:
        os.unlink(tmp)


def _measured_probe(
    spec: InferenceSpec, rt: Runtime, blobs: BlobStore, model: Path, rows_in: Path, rows: int
) -> Determinism:
    """The probe of `rows_in` (the first `rows` rows) in a fresh measured child, stopped past the
    margin; its verdict, or SpecError naming the limit and the peak (memory.over_memory), or the
    child's SandboxFailure as the warm child's probe raises it."""

    def run(stop: int) -> Measured:
        return measure_probe(rt, blobs, model, rows_in, list(spec.input_names), spec.batch_size, stop)

    what = f"intake's probe of {rows} rows (the first of its first shard, at its batch size)"
    m = measured_run(spec.task_memory_limit_bytes, rt.sandbox.memory_bytes, what, run)
    if m.failure is not None:
        raise m.failure  # as the warm child's probe would have raised it (vet_inference)
    assert m.answer is not None
    return determinism_of(m.answer)


def vet_inference(spec: InferenceSpec, rt: Runtime, blobs: BlobStore) -> None:
    """Refuse (SpecError) a program whose rows are not independent; a program that cannot run
    on this coordinator's CPU is refused too, unless the job asks for CUDA (then the referee,
    which never blames without reproducing, is what stands between it and honest nodes)."""
    started = time.monotonic()
    try:
        verdict = probe_program(spec, rt, blobs)
    except SpecError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure inside a stranger's graph
        if spec.device == "cuda":
            log.warning("could not probe a CUDA program's row independence on this coordinator: %s", e)
            return
        if isinstance(e, SandboxFailure) and e.kind == OUT_OF_MEMORY and rt.sandbox.memory_bytes > 0:
            raise SpecError(out_of_cap(spec.task_memory_limit_bytes, rt.sandbox.memory_bytes, PROBE, e)) from None
        raise SpecError(
            "the program failed on sample rows of the input (run as the shard's first batch, reversed, and "
            f"on a few rows alone; every batch size must work): {type(e).__name__}: {e}"
        ) from None
    log.info("row-independence probe of %s took %.3fs", spec.model.sha256[:12], time.monotonic() - started)
    if not verdict.independent:
        raise SpecError(f"refused: the program is not verifiable. {verdict.reason}")
    if not verdict.finished:
        log.warning("row-independence probe of %s stopped early (%d rows)", spec.model.sha256[:12], verdict.rows)
    slow = too_slow(spec, verdict, tensorfile.batch_rows(tensorfile.read_header(stored(blobs, spec.inputs, "inputs"))))
    if slow:
        raise SpecError(slow)


def too_slow(spec: InferenceSpec, verdict: Determinism, total: int) -> str:
    """Why a task of the job cannot run within its time limit on the referee's CPU, the grid's
    reference (repositories.limit_claims, "Over its time limit"), by the probe's timing ("": it may).
    A lower bound, so no job is refused on a guess: the probe's batch (verdict.rows rows) is no
    larger than the job's batches, so each whole batch of a shard takes at least its fastest run,
    counted as its CPU time over the threads it could use (tensorgrid.workloads.determinism: a wall
    time would grow with the load on the coordinator, and refuse a sound job on a busy day).
    Past the margin a review would confirm (ReviewSettings.over_limit) every node's run of such a
    task would time out and fail the job after two runs and a review: better refused now."""
    if spec.device == "cuda":
        return ""  # a GPU's pace is not the referee's: a CUDA run's timeout is its node's own, never a claim
    shard = min(spec.shard_rows, total)
    batches = max(1, shard // spec.batch_size) if spec.batch_size else 1
    least = batches * verdict.batch_s
    if verdict.rows < 1 or least <= ReviewSettings.over_limit * spec.task_time_limit_s:
        return ""
    size = f"{batches} batches of {spec.batch_size} rows" if spec.batch_size else f"one batch of {shard} rows"
    return (
        f"refused: a task of this job would take at least {least:.0f}s on the coordinator's CPU, over its "
        f"task_time_limit_s of {spec.task_time_limit_s}s ({size}, each at least the {verdict.batch_s:.3f}s the "
        f"probe's batch of {verdict.rows} rows took): raise task_time_limit_s or make shard_rows smaller"
    )
