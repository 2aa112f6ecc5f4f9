"""The referee's work on a generation check, in the coordinator's sandboxed child
(services.sandboxed), never in its own process: scoring a claimed output (one teacher-forced
forward pass, tensorgrid.workloads.scoring) and, when that does not settle it, the decoding loop
over the check's prompts. And its measured run of a generation task, for a claim that its program
needs more than the task's memory limit (services.verification.memory): the decoding loop over
every prompt of the task in a fresh child of its own, as a node's worker runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.services.measured import measure_generation
from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import regenerate_rows, score_claim
from coordinator.services.verification.runs import MeasureRun, Replay, Score
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox.measured import Measured


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


def measure_decoding(rt: Runtime, blobs: BlobStore) -> MeasureRun:
    """A MeasureRun of a generation task (or a check of one): the decoding loop over its prompts
    with the job's settings, on CPU in a fresh child, its peak memory measured."""

    def measure(model: Path, source: Path, settings: dict[str, Any], stop: int, mark: int) -> Measured:
        return measure_generation(rt, blobs, model, source, settings["generation"], stop, mark)

    return measure
