"""The referee's review of a training task two nodes claimed cannot be run (their input invalid
or unsafe: services.verification.reviews): it runs the task as a node's worker would
(tensorgrid.training.task), from what the task was leased with: the train program, the round's
global weights named in its settings, its shard and its inner settings. It runs in the
coordinator's sandboxed child (services.sandboxed) under the referee's limits, in parts of one
referee request each, the training state kept between them: a run whose last part completes
disproves the claims; one that raises, hits the memory limit or spends the task's review budget
confirms them. Its measured run (measure_training) reviews claims that the program needs more than
the task's memory limit: the same parts, each in a fresh child whose peak memory is measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.services.measured import measure_train_part
from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import Part, train_task_part
from coordinator.services.verification.runs import InParts, PartReplay
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox.measured import Measured

RAN = "its inner steps ran from the round's weights over its shard"


def review_training(rt: Runtime, blobs: BlobStore) -> PartReplay:
    """Runs the next part of the training task: `source` is its shard, `settings` as leased,
    `state` what the part before reached (None: the start)."""

    def part(program: Path, source: Path, settings: dict[str, Any], state: Path | None, out: Path) -> Part:
        return train_task_part(rt, blobs, program, _weights(blobs, settings), source, settings, state, out)

    return part


def measure_training(rt: Runtime, blobs: BlobStore) -> InParts:
    """The referee's measured run of a training task in parts, for claims that its program needs
    more than the task's memory limit (services.verification.memory_parts): each part as
    review_training's, at most `most` inner steps, in a fresh child of its own."""

    def part(
        program: Path, source: Path, settings: dict[str, Any], state: Path | None, out: Path, most: int,
        stop: int, mark: int,
    ) -> Measured:  # fmt: skip
        weights = _weights(blobs, settings)
        return measure_train_part(rt, blobs, program, weights, source, settings, state, out, most, stop, mark)

    return InParts(part)


def _weights(blobs: BlobStore, settings: dict[str, Any]) -> Path:
    """The round's global weights a task's settings name, from the store."""
    weights = (settings.get("blobs") or {}).get("weights") or {}
    sha = str(weights.get("sha256") or "")
    path = blobs.path_for(sha) if sha else None
    if path is None or not path.exists():
        raise FileNotFoundError("the round's weights the task names are not in the blob store")
    return path
