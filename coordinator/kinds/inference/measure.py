"""The referee's measured run of an inference task, for a claim that its program needs more than
the task's memory limit (services.verification.memory): every row of its input at the job's batch
size, in a fresh sandboxed child of its own (services.measured.measure_rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.services.measured import measure_rows
from coordinator.services.runtime import Runtime
from coordinator.services.verification.runs import MeasureRun
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox.measured import Measured


def measure_inference(rt: Runtime, blobs: BlobStore) -> MeasureRun:
    """A MeasureRun of an inference task (or a check of one) with its settings as leased."""

    def measure(model: Path, source: Path, settings: dict[str, Any], stop: int, mark: int) -> Measured:
        names, batch = settings.get("input_names") or None, int(settings.get("batch_size") or 0)
        return measure_rows(rt, blobs, model, source, batch, names, stop, mark)

    return measure
