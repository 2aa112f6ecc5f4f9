"""The referee's replay of a generation check: the decoding loop over the check's prompts,
in the coordinator's sandboxed child (services.sandboxed), never in its own process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import regenerate_rows
from coordinator.services.verification.manager import Replay
from tensorgrid.blobs import BlobStore


def replay_generation(rt: Runtime, blobs: BlobStore) -> Replay:
    """A Replay that decodes the prompts of a check's input with the job's settings, on CPU."""

    def replay(model: Path, source: Path, out: Path, settings: dict[str, Any]) -> None:
        regenerate_rows(rt, blobs, model, source, out, settings["generation"])

    return replay
