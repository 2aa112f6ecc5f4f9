"""Checking a training task's output before it is accepted."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from coordinator.errors import Rejected
from coordinator.repositories.training.rounds import task_settings
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import TensorGridError
from tensorgrid.workloads.tensorfile import read_header

_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


def check_train_output(engine: Engine, blobs: BlobStore, task_id: str, path: Path, commitment: str = "") -> None:
    """Is path a valid pseudo-gradient for this task? Raises Rejected saying why not.

    Names and shapes must be those of the round's floating weights, the trace must cover the
    task's inner steps over its whole shard, and the receipt's commitment (when given) must
    be the result's final checkpoint-chain hash, so the signature covers the chain.
    Blocking (reads files and one task row): run it on a work thread.
    """
    # tensorgrid.training imports torch: imported once a training job needs it
    from tensorgrid.training.commitments import checkpoint_steps
    from tensorgrid.training.compression import read_result

    settings, shard_rows = task_settings(engine, task_id)
    try:
        weights = settings["blobs"]["weights"]["sha256"]
        steps = int(settings["inner"]["steps"])
        marks = checkpoint_steps(steps, int(settings["inner"]["checkpoint_every"]))
    except (KeyError, TypeError, ValueError):
        raise Rejected("the task is not a training task") from None
    try:
        result = read_result(path)
        header = read_header(blobs.path_for(weights))
    except TensorGridError as e:
        raise Rejected(f"output is not a valid pseudo-gradient file: {e}") from None
    expected = {n: t.shape for n, t in header.tensors.items() if t.dtype in _FLOAT_DTYPES}
    got = {n: tuple(t.shape) for n, t in result.tensors.items()}
    if set(got) != set(expected):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        raise Rejected(f"pseudo-gradient tensors differ from the weights: missing {missing[:5]}, extra {extra[:5]}")
    for name, shape in expected.items():
        if tuple(shape) != got[name]:
            raise Rejected(f"pseudo-gradient {name!r} has shape {list(got[name])}, the weights {list(shape)}")
    if result.steps != steps or result.rows != shard_rows:
        raise Rejected(
            f"result covers {result.steps} steps over {result.rows} rows; the task is {steps} steps over {shard_rows}"
        )
    if result.checkpoint_steps != marks:
        raise Rejected(f"result commits checkpoints at steps {result.checkpoint_steps[:8]}, the task at {marks[:8]}")
    if commitment and commitment.lower().removeprefix("0x") != result.final_commitment.lower().removeprefix("0x"):
        raise Rejected("the receipt's commitment is not the result's final checkpoint hash")
