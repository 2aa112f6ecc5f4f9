"""Memory at intake for a generation job (coordinator.kinds.memory): when measures_memory says so
(a limit below the referee's cap, tasks that may run on CPU), the job's first prompts are decoded
for a few tokens in a fresh child of its own, its peak resident memory measured, and the job is
refused past ReviewSettings.over_limit × its task_memory_limit_bytes, naming the limit and the peak.

What runs is a part of the job's first task as a CPU node runs it: its first batch (the job's
batch size, a whole shard when that is 0; at most MAX_BATCH prompts), its tokens cut to those
prompts' longest as a shard's are, their own seeds, the job's decode settings, but at most
PROBE_TOKENS new tokens, so it is bounded by the probe's time and holds no more than the first
steps of that task (the decoding loop's memory grows with the sequence). Any other job goes
unprobed, as before: a generation job's program is checked only statically at intake
(check_program), its runs by the nodes and the referee.
"""

from __future__ import annotations

import os
from pathlib import Path

from coordinator.kinds.memory import can_measure, measured_run, measures_memory, refuse_failure
from coordinator.services.blobs import stored
from coordinator.services.measured import measure_generation
from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import PROBE_TIME_S
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox.measured import Measured
from tensorgrid.spec import GenerationSpec
from tensorgrid.workloads import tensorfile
from tensorgrid.workloads.arrays import array_of, load_arrays, save_arrays
from tensorgrid.workloads.prompts import job_seeds
from tensorgrid.workloads.rowcontract import MAX_BATCH

PROBE_TOKENS = 4  # new tokens a prompt of intake's run decodes at most


def probes_memory(spec: object, rt: Runtime) -> bool:
    """Whether intake decodes the job's first prompts in a fresh measured child (see the module)."""
    return isinstance(spec, GenerationSpec) and measures_memory(spec, rt) and can_measure()


def vet_generation(spec: GenerationSpec, rt: Runtime, blobs: BlobStore) -> None:
    """Decode the job's first batch of prompts for a few tokens in a fresh measured child (blocking,
    bounded by PROBE_TIME_S) when probes_memory says so; SpecError past its memory limit, naming the
    limit and the peak, or when the program fails to run at all."""
    if not probes_memory(spec, rt):
        return
    prompts = stored(blobs, spec.prompts, "prompts")
    model = stored(blobs, spec.model, "model")
    count = min(spec.batch_size or spec.shard_prompts, spec.shard_prompts, MAX_BATCH)
    tmp = blobs.temp_path("probe-")
    try:
        count = _first_batch(spec, prompts, count, tmp)
        tokens = min(spec.max_new_tokens, PROBE_TOKENS)
        decode = {**spec.decode_settings(), "max_new_tokens": tokens}
        del decode["seed"]  # in the file's `seeds`, as in a shard's
        what = f"intake's decoding of its first {count} prompts ({tokens} tokens each, at its batch size)"
        limit, cap = spec.task_memory_limit_bytes, rt.sandbox.memory_bytes

        def run(stop: int) -> Measured:
            return measure_generation(rt, blobs, model, tmp, decode, stop, time_s=PROBE_TIME_S)

        m = measured_run(limit, cap, what, run)
    finally:
        os.unlink(tmp)
    refuse_failure(m, limit, cap, what, program="program", does="decode")


def _first_batch(spec: GenerationSpec, prompts: Path, count: int, out: Path) -> int:
    """Write the job's first `count` prompts (fewer when it has fewer) to `out` as a shard holds
    them: tokens cut to their longest, lengths, their seeds. How many it wrote."""
    rows = list(range(min(count, tensorfile.batch_rows(tensorfile.read_header(prompts)))))
    arrays = load_arrays(prompts, rows)
    lengths = arrays["lengths"]
    shard = {
        "tokens": arrays["tokens"][:, : int(lengths.data.max())],
        "lengths": lengths,
        "seeds": array_of(job_seeds(spec.seed, 0, len(rows))),
    }
    save_arrays(shard, out)
    return len(rows)
