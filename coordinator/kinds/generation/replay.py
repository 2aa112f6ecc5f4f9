"""The referee's work on a generation check, in the coordinator's sandboxed child
(services.sandboxed), never in its own process: scoring a claimed output (one teacher-forced
forward pass, tensorgrid.workloads.scoring) and, when that does not settle it, the decoding loop
over the check's prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import regenerate_rows, score_claim
from coordinator.services.verification.manager import Replay, Score
from tensorgrid.blobs import BlobStore


def replay_generation(rt: Runtime, blobs: BlobStore) -> Replay:
    """A Replay that decodes the prompts of a check's input with the job's settings, on CPU."""

    def replay(model: Path, source: Path, out: Path, settings: dict[str, Any]) -> None:
        regenerate_rows(rt, blobs, model, source, out, settings["generation"])

    return replay


def score_generation(rt: Runtime, blobs: BlobStore) -> Score:
    """A Score that checks a claimed output of a check's prompts against the job's model and
    settings without decoding, on CPU; per prompt, whether the decoding loop gives the claim."""

    def score(model: Path, source: Path, claim: Path, out: Path, settings: dict[str, Any]) -> list[bool]:
        return score_claim(rt, blobs, model, source, claim, out, settings["generation"])

    return score
