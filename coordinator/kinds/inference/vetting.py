"""The determinism contract at intake: a program whose output rows are not independent of
each other is refused before any node runs it (tensorgrid.workloads.determinism probes it).
So is a program that needs more than its task's time limit (too_slow) or, on the probe's rows
already, more than its task's memory limit (over_memory).

The probe runs the submitter's graph in the coordinator's sandboxed child
(services.sandboxed: no key, no network, bounded time and memory), never in this process.

Memory at intake. The referee's warm child holds other jobs' programs and has a cap of its own,
so it cannot tell one program's memory. When the job's task_memory_limit_bytes is below that cap
(--referee-memory-mib; a limit at or over it is guarded by the cap itself: a probe holding more than
1.25× such a limit maps more than the cap allows past its start-up, whenever a quarter of the cap
exceeds a child's ~300 MiB baseline, so it runs out of the cap and is refused naming cap and limit:
out_of_cap) and its tasks may run on CPU, the probe runs
instead in a fresh child of its own whose peak resident memory is measured as a memory review
measures a task's (services.sandboxed.measure_probe, tensorgrid.sandbox.measured: VmHWM with torch
loaded, reset after the greeting, as a node's worker is measured), killed once it holds the
margin a review would confirm (ReviewSettings.over_limit, 1.25) × the limit. Past that the job is
refused, naming the limit and the peak: every CPU node's run of a task would meet the limit (its
rows include the probe's, at the same batch size or larger), and a review of their claims would
confirm it. Below it the job goes on; a program small at the probe's batch (at most MAX_BATCH rows,
and 1% of the job's) and large at a shard's is left to the nodes' claims and their review
(repositories.claims, "Over its memory limit"), which measure the whole task. Cost: one fresh
child per such submission (a zygote's fork where one serves, else an interpreter and torch),
run on the referee's one thread like every probe (one at a time), and each submitter holds one of
intake's validation slots while it runs (services.intake). Where no /proc can be read, the probe
runs in the warm child as before (logged once).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

from coordinator.config import ReviewSettings
from coordinator.services.blobs import stored
from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import determinism_of, measure_probe, probe_rows
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import SpecError
from tensorgrid.processes import peak_rss
from tensorgrid.sandbox.measured import Measured
from tensorgrid.sandbox.oneshot import OUT_OF_MEMORY, SandboxFailure
from tensorgrid.spec import InferenceSpec
from tensorgrid.workloads import tensorfile
from tensorgrid.workloads.rowcontract import MAX_BATCH, Determinism, budget_batch

log = logging.getLogger("tensorgrid.coordinator.intake")
MiB = 2**20


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


def measures_memory(spec: object, rt: Runtime) -> bool:
    """Whether intake measures the probe's peak memory in a fresh child (see the module): an
    inference job whose tasks may run on CPU (a GPU node's memory is not what the referee
    measures) with a task memory limit below the referee's own cap (or no cap)."""
    if not isinstance(spec, InferenceSpec) or spec.device == "cuda":
        return False
    cap = rt.sandbox.memory_bytes
    return cap <= 0 or spec.task_memory_limit_bytes < cap


@functools.cache
def can_measure() -> bool:
    """Whether this machine lets the coordinator read a process's peak memory (Linux /proc);
    said once in the log when it cannot."""
    if peak_rss(os.getpid()) is not None:
        return True
    log.warning("no peak memory to read here (no /proc): intake's probe runs in the referee's warm child, unmeasured")
    return False


def _measured_probe(
    spec: InferenceSpec, rt: Runtime, blobs: BlobStore, model: Path, rows_in: Path, rows: int
) -> Determinism:
    """The probe of `rows_in` (the first `rows` rows) in a fresh measured child, stopped past the
    margin; its verdict, or SpecError naming the limit and the peak (over_memory), or the child's
    SandboxFailure as the warm child's probe raises it."""
    limit = spec.task_memory_limit_bytes
    stop = int(ReviewSettings.over_limit * limit)
    m = measure_probe(rt, blobs, model, rows_in, list(spec.input_names), spec.batch_size, stop)
    refused = over_memory(spec, m, rows, cap=rt.sandbox.memory_bytes)
    if refused:
        raise SpecError(refused)
    if m.failure is not None:
        raise m.failure  # as the warm child's probe would have raised it (vet_inference)
    if not m.readable:
        log.warning("could not read the peak memory of %s's probe: it is not measured", spec.model.sha256[:12])
    log.info(
        "the probe of %s held at most %.0f MiB (its limit: %.0f MiB)",
        spec.model.sha256[:12],
        m.peak_bytes / MiB,
        limit / MiB,
    )
    assert m.answer is not None
    return determinism_of(m.answer)


def over_memory(spec: InferenceSpec, m: Measured, rows: int, *, cap: int) -> str:
    """Why the job is refused for the probe's measured memory ("": it is not): its run held more
    than ReviewSettings.over_limit × the task's memory limit (so it was stopped), or ran out of
    the referee's own cap where that cap is itself past that margin (a MemoryError there)."""
    limit, over = spec.task_memory_limit_bytes, ReviewSettings.over_limit
    said = f"refused: the program needs more than its task_memory_limit_bytes of {limit / MiB:.0f} MiB"
    fix = "raise task_memory_limit_bytes (and run on nodes that offer it) or make the program need less"
    probe = f"intake's probe of {rows} rows (the first of its first shard, at its batch size)"
    if m.stopped or m.peak_bytes > over * limit:
        how = "run in a fresh process on the coordinator's CPU and measured as a node's worker is"
        held = f"held at least {m.peak_bytes / MiB:.0f} MiB, over {over:g}× the limit"
        return f"{said}: {probe}, {how}, {held}: {fix}"
    if m.failure is not None and m.failure.kind == OUT_OF_MEMORY and cap >= over * limit:
        held = f"ran out of the coordinator's cap of {cap / MiB:.0f} MiB, over {over:g}× the limit"
        return f"{said}: {probe} {held}: {fix}"
    return ""


def out_of_cap(spec: InferenceSpec, cap: int, e: SandboxFailure) -> str:
    """Why a job whose probe ran out of the referee's memory cap is refused (with a limit at or over
    the cap the probe is not measured, measures_memory: the cap is what it met)."""
    limit = spec.task_memory_limit_bytes
    return (
        f"refused: the program ran out of the coordinator's memory cap of {cap / MiB:.0f} MiB on intake's "
        f"probe of the first rows of its first shard (its task_memory_limit_bytes is {limit / MiB:.0f} MiB): "
        f"make the program need less ({e})"
    )


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
            raise SpecError(out_of_cap(spec, rt.sandbox.memory_bytes, e)) from None
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
