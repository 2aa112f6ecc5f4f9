"""The determinism contract at intake: a program whose output rows are not independent of
each other is refused before any node runs it (tensorgrid.workloads.determinism probes it).

The probe runs the submitter's graph in the coordinator's sandboxed child
(services.sandboxed: no key, no network, bounded time and memory), never in this process.
"""

from __future__ import annotations

import logging
import os
import time

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
