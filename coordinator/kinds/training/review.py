"""The referee's review of a training task two nodes claimed cannot be run (their input invalid
or unsafe: services.verification.reviews): it runs the task as a node's worker would
(tensorgrid.training.task), from what the task was leased with: the train program, the round's
global weights named in its settings, its shard and its inner settings. It runs in the
coordinator's sandboxed child (services.sandboxed) under the referee's limits, in parts of one
referee request each, the training state kept between them: a run whose last part completes
disproves the claims; one that raises, hits the memory limit or spends the task's review budget
confirms them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import Part, train_task_part
from coordinator.services.verification.runs import PartReplay
from tensorgrid.blobs import BlobStore

RAN = "its inner steps ran from the round's weights over its shard"


def review_training(rt: Runtime, blobs: BlobStore) -> PartReplay:
    """Runs the next part of the training task: `source` is its shard, `settings` as leased,
    `state` what the part before reached (None: the start)."""

    def part(program: Path, source: Path, settings: dict[str, Any], state: Path | None, out: Path) -> Part:
        weights = (settings.get("blobs") or {}).get("weights") or {}
        sha = str(weights.get("sha256") or "")
        path = blobs.path_for(sha) if sha else None
        if path is None or not path.exists():
            raise FileNotFoundError("the round's weights the task names are not in the blob store")
        return train_task_part(rt, blobs, program, path, source, settings, state, out)

    return part
