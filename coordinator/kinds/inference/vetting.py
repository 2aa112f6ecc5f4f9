"""The determinism contract at intake: a program whose output rows are not independent of
each other is refused before any node runs it (tensorgrid.workloads.determinism probes it).

This is the one place intake runs a submitter's graph; it runs on the coordinator's work
pool for now, loaded with the same vetted loader nodes use, under the verification's torch
lock. Moving stranger-graph execution into a sandboxed child process means rerouting
`probe_program` only.
"""

from __future__ import annotations

import logging
import os
import threading

import torch

from coordinator.services.blobs import stored
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import SpecError
from tensorgrid.spec import InferenceSpec
from tensorgrid.workloads import tensorfile
from tensorgrid.workloads.determinism import MAX_BATCH, Determinism, probe
from tensorgrid.workloads.model import load_program

log = logging.getLogger("tensorgrid.coordinator.intake")


def probe_program(spec: InferenceSpec, blobs: BlobStore, lock: threading.Lock) -> Determinism:
    """Probe the job's program on the first rows of its first shard (blocking, bounded)."""
    src = stored(blobs, spec.inputs, "inputs")
    header = tensorfile.read_header(src)
    rows = min(tensorfile.batch_rows(header), spec.shard_rows, spec.batch_size or MAX_BATCH, MAX_BATCH)
    tmp = blobs.temp_path("probe-")
    try:
        tensorfile.gather_rows(src, list(range(rows)), tmp)
        tensors = tensorfile.load_tensors(tmp)
    finally:
        os.unlink(tmp)
    names = list(spec.input_names) or sorted(tensors)
    inputs = [tensors[name] for name in names]
    with lock:  # torch.export.load is not thread-safe; the referee shares this lock
        module = load_program(stored(blobs, spec.model, "model"), torch.device("cpu"))
        return probe(lambda batch: module(*batch), inputs, batch_size=spec.batch_size)


def vet_inference(spec: InferenceSpec, blobs: BlobStore, lock: threading.Lock) -> None:
    """Refuse (SpecError) a program whose rows are not independent; a program that cannot run
    on this coordinator's CPU is refused too, unless the job asks for CUDA (then the referee,
    which never blames without reproducing, is what stands between it and honest nodes)."""
    try:
        verdict = probe_program(spec, blobs, lock)
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
    if not verdict.independent:
        raise SpecError(f"refused: the program is not verifiable. {verdict.reason}")
    if not verdict.finished:
        log.warning("row-independence probe of %s stopped early (%d rows)", spec.model.sha256[:12], verdict.rows)
