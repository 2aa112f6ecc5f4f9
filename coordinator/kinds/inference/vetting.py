"""The determinism contract at intake: a program whose output rows are not independent of
each other is refused before any node runs it (tensorgrid.workloads.determinism probes it).

The probe runs the submitter's graph in the coordinator's sandboxed child
(services.sandboxed: no key, no network, bounded time and memory), never in this process.
"""

from __future__ import annotations

import logging
import os
import time

from coordinator.config import ReviewSettings
from coordinator.services.blobs import stored
from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import probe_rows
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import SpecError
from tensorgrid.spec import InferenceSpec
from tensorgrid.workloads import tensorfile
from tensorgrid.workloads.rowcontract import MAX_BATCH, Determinism, budget_batch

log = logging.getLogger("tensorgrid.coordinator.intake")


def probe_program(spec: InferenceSpec, rt: Runtime, blobs: BlobStore) -> Determinism:
    """Probe the job's program on the first rows of its first shard (blocking, bounded, and
    sized to the job: budget_batch)."""
    src = stored(blobs, spec.inputs, "inputs")
    header = tensorfile.read_header(src)
    total = tensorfile.batch_rows(header)
    rows = min(total, spec.shard_rows, spec.batch_size or MAX_BATCH, budget_batch(total))
    tmp = blobs.temp_path("probe-")
    try:
        tensorfile.gather_rows(src, list(range(rows)), tmp)
        model = stored(blobs, spec.model, "model")
        return probe_rows(rt, blobs, model, tmp, list(spec.input_names), spec.batch_size)
    finally:
        os.unlink(tmp)


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
    reference (repositories.claims, "Over its time limit"), by the probe's timing ("": it may).
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
