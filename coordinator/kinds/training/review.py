"""The referee's review of a training task two nodes claimed cannot be run (their input invalid
or unsafe: services.verification.reviews): it runs the task as a node's worker would
(tensorgrid.training.task), from what the task was leased with: the train program, the round's
global weights named in its settings, its shard and its inner settings. It runs in the
coordinator's sandboxed child (services.sandboxed) under the referee's limits: a run that
completes disproves the claims; one that raises or hits a limit confirms them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import train_task
from coordinator.services.verification.manager import Replay
from tensorgrid.blobs import BlobStore

RAN = "its inner steps ran from the round's weights over its shard"


def review_training(rt: Runtime, blobs: BlobStore) -> Replay:
    """A Replay that runs the whole training task: `source` is its shard, `settings` as leased."""

    def replay(program: Path, source: Path, out: Path, settings: dict[str, Any]) -> None:
        weights = (settings.get("blobs") or {}).get("weights") or {}
        sha = str(weights.get("sha256") or "")
        path = blobs.path_for(sha) if sha else None
        if path is None or not path.exists():
            raise FileNotFoundError("the round's weights the task names are not in the blob store")
        train_task(rt, blobs, program, path, source, settings, out)

    return replay
