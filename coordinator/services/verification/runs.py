"""How the referee runs each task kind's program, in its sandboxed children, one at a time: the
re-run of a check's rows (Replay; inference's by default), the cheaper check of a claimed output
(Score: generation's scoring) and the measured run of a task for a memory claim (MeasureRun,
memory.py; in parts, InParts: memory_parts.py). Each job kind registers its own
(Verification.add_replay, add_measure); a task's settings name its task kind (`task_kind`; none:
inference), so a check task, which runs as its job's tasks do, is run and measured as they are."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import Part, reexecute_rows
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox.measured import Measured

__all__ = ["INFERENCE", "InParts", "KindRuns", "MeasurePart", "MeasureRun", "PartReplay", "Replay", "Score"]

# (model path, check input, output path, task settings): re-run a check's rows in the sandboxed child
Replay = Callable[[Path, Path, Path, dict[str, Any]], None]
# (program, input, settings, state the part before reached or None, out): one part of a reviewed task
PartReplay = Callable[[Path, Path, dict[str, Any], Path | None, Path], Part]
# (model path, check input, claimed output rows, output path, task settings): per row, whether the
# claim is what a re-run would give, found without re-running in full (generation: scoring)
Score = Callable[[Path, Path, Path, Path, dict[str, Any]], list[bool]]
# (model path, task input, task settings, stop at bytes, mark at bytes): a task's run in a fresh
# child, its peak memory measured (memory.py: the kind's services.measured.measure_* call)
MeasureRun = Callable[[Path, Path, dict[str, Any], int, int], Measured]
# (model path, task input, task settings, state the part before reached or None, out, at most this
# many inner steps, stop at bytes, mark at bytes): one part of a task's run in a fresh child, its peak
# memory measured (training: services.measured.measure_train_part; memory_parts.py)
MeasurePart = Callable[[Path, Path, dict[str, Any], Path | None, Path, int, int, int], Measured]


@dataclass(frozen=True)
class InParts:
    """A kind's measured run in parts of one request each, the state carried between them (training:
    a task longer than one request), for Verification.add_measure; a MeasureRun is one whole run."""

    part: MeasurePart


INFERENCE = "inference"  # the task kind of a task whose settings name none


def kind_of(settings: dict[str, Any]) -> str:
    """The task kind a task's (or a check's) settings name ("": none, inference's)."""
    return str(settings.get("task_kind", ""))


class KindRuns:
    def __init__(self, rt: Runtime, blobs: BlobStore) -> None:
        self.rt, self.blobs = rt, blobs
        self.lock = threading.Lock()  # one referee child at a time: its memory cap is the coordinator's budget
        self.replays: dict[str, Replay] = {}  # task kind (settings["task_kind"]) → how the referee re-runs it
        self.scores: dict[str, Score] = {}  # task kind → how the referee checks a claim without re-running it
        self.measures: dict[str, MeasureRun] = {}  # task kind → how the referee measures a run's memory

    def run(self, model_sha: str, settings: dict[str, Any], source: Path, out: Path) -> None:
        """The task's program over `source` (its rows, or its prompts) into `out`."""
        model = self.blobs.path_for(model_sha)
        with self.lock:
            replay = self.replays.get(kind_of(settings), self._replay_inference)
            replay(model, source, out, settings)

    def measure(self, model_sha: str, settings: dict[str, Any], source: Path, stop: int, mark: int) -> Measured:
        """The task's run over `source` in a fresh child, its peak memory measured (memory.py).
        LookupError for a kind no measure is registered for: a review that cannot measure is
        undecided, never judged by another kind's run of the program."""
        runs = kind_of(settings) or INFERENCE
        measure = self.measures.get(runs)
        if measure is None:
            raise LookupError(f"the referee does not measure the memory of {runs} tasks")
        with self.lock:
            return measure(self.blobs.path_for(model_sha), source, settings, stop, mark)

    def measure_part(
        self, model_sha: str, settings: dict[str, Any], source: Path, state: Path | None, out: Path, most: int,
        stop: int, mark: int, part: MeasurePart,
    ) -> Measured:  # fmt: skip
        """One measured part of the task's run (`part`, its kind's), one referee child at a time."""
        with self.lock:
            return part(self.blobs.path_for(model_sha), source, settings, state, out, most, stop, mark)

    def _replay_inference(self, model: Path, source: Path, out: Path, settings: dict[str, Any]) -> None:
        batch = int(settings.get("batch_size") or 0)
        names = settings.get("input_names") or None  # the job's argument order, as the nodes ran it
        reexecute_rows(self.rt, self.blobs, model, source, out, batch, names)
