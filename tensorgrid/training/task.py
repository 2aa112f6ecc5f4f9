"""One training task run from what its lease says: the round's settings, the train program, the
round's global weights and the task's shard in, the sealed pseudo-gradient out.

A node's worker runs it (node.worker), and so does the coordinator's referee, in its sandboxed
child, when two nodes claim a task's input cannot be run (a review): the referee's verdict is
about the very run a node makes, so both call this code. The referee runs it in parts
(run_task_for), each within one of its requests, keeping the training state between them in a
file: a task longer than one request is reviewed whole all the same.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tensorgrid.blobs import file_sha256
from tensorgrid.errors import SpecError
from tensorgrid.training.inner import InnerResult, InnerSettings, run_inner, run_inner_for, write_result
from tensorgrid.workloads.tensorfile import load_tensors, read_header, save_tensors

__all__ = ["leased_settings", "run_first_step", "run_task", "run_task_for"]
# a part's state file: the checkpoint digests reached ({step: hex}) and the losses of the steps so far
_DIGESTS, _LOSSES = "review_digests", "review_losses"


def leased_settings(settings: Mapping[str, Any], shard_sha: str, device: str) -> InnerSettings:
    """The inner settings of the task whose shard hashes to `shard_sha`: one settings object
    serves a whole round, and each worker's seed is keyed by its shard's hash."""
    seeds = settings.get("seeds") or {}
    if not isinstance(seeds, Mapping) or shard_sha not in seeds:
        raise SpecError("the task's settings have no seed for its shard")
    compression = str(settings.get("compression", "int8"))  # the last checkpoint digest commits it too
    inner = settings.get("inner") or {}
    if not isinstance(inner, Mapping):
        raise SpecError("the task's inner settings are not an object")
    return InnerSettings.from_dict({**inner, "seed": seeds[shard_sha], "device": device, "compression": compression})


def run_task(
    program: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    shard: str | os.PathLike[str],
    settings: Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    device: str,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> InnerResult:
    """The task's inner steps from the round's weights on its shard; writes the compressed
    pseudo-gradient to `out`. With checkpoint_dir the model part of each checkpoint is saved
    there (a node keeps them for reveals); without, none is written (the referee's review needs
    the run, not steps / checkpoint_every copies of a stranger's model on the coordinator's disk)."""
    inner = leased_settings(settings, file_sha256(Path(shard)).sha256, device)
    result = run_inner(program, weights, shard, inner, checkpoint_dir=checkpoint_dir)
    write_result(result, out, inner.compression)
    return result


def run_task_for(
    program: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    shard: str | os.PathLike[str],
    settings: Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    seconds: float,
    device: str,
    state: str | os.PathLike[str] | None = None,
    most_steps: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> tuple[int, int, bool]:
    """One part of run_task: from the state file a previous part wrote (None: the start), inner
    steps until `seconds` after the call (loading included: only the last step and the save run
    past it; at least one step), and at most `most_steps` of them (0: no such bound). Writes to
    `out` the state reached, or the sealed pseudo-gradient once the last step is done; (step
    reached, the task's steps, done). The state read is dropped once restored (run_inner_for), so
    a part holds what a node's run holds at its step, not a second copy of the state besides.
    on_step: told the inner steps done as the part goes (run_inner_for's): how far a part that
    failed got."""
    until = time.monotonic() + seconds
    inner = leased_settings(settings, file_sha256(Path(shard)).sha256, device)
    digests: dict[int, bytes] = {}
    losses: list[float] = []
    if state is not None:
        kept = read_header(state).metadata
        marks, losses = json.loads(kept.get(_DIGESTS, "{}")), [float(x) for x in json.loads(kept.get(_LOSSES, "[]"))]
        digests = {int(k): bytes.fromhex(v) for k, v in marks.items()}
    saved = load_tensors(state) if state is not None else None
    part = run_inner_for(
        program, weights, shard, inner, until=until, state=saved, digests=digests, losses=losses, most_steps=most_steps,
        keep_state=False, on_step=on_step,
    )  # fmt: skip
    del saved
    if part.result is not None:
        write_result(part.result, out, inner.compression)
    else:
        meta = {_DIGESTS: {str(k): v.hex() for k, v in part.digests.items()}, _LOSSES: part.losses}
        save_tensors(part.state, out, metadata={k: json.dumps(v, separators=(",", ":")) for k, v in meta.items()})
    return part.step, inner.steps, part.result is not None


def run_first_step(
    program: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    shard: str | os.PathLike[str],
    settings: Mapping[str, Any],
    *,
    device: str,
) -> None:
    """The task's first inner step as run_task takes it (the leased `settings`, the round's
    `weights`, the task's `shard`), nothing written: what a task holds at its first step (the
    weights, their gradients and optimizer moments, one batch's activations) is what the
    coordinator's intake measures of a training job (coordinator.kinds.training.vetting)."""
    inner = leased_settings(settings, file_sha256(Path(shard)).sha256, device)
    run_inner_for(program, weights, shard, inner, until=0.0)  # `until` is past: one step
