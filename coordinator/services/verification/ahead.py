"""The referee's re-runs of a check made before its ruling is asked for.

A check of an untrusted node's result always ends with a ruling: the checker's agreement is
confirmed by the referee re-running the check's rows (rulings.py), and a disagreement is ruled
on by the same re-run. That re-run does not depend on what the checker answers, only on the
check's input, the job's model and its settings, so the referee can make it as soon as the check
opens, while the checker fetches and runs it, rather than after. At a job's end, where the last
shard's check and its confirmation used to run one after the other while the other node sat
idle, they now run side by side; the ruling itself then only compares rows.

Nothing about a ruling changes: it takes the ahead run's output only when it is the re-run it
would make (same model, same input, same rows, same settings), compares everyone with it as
before, and runs the soundness tests before blaming anyone as before. A check settled otherwise,
a run that failed, or a coordinator restart leaves the ruling to re-run as it always did.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

KEPT = 32  # ahead outputs kept (a few kilobytes each): more than the checks open at once on a grid
QUEUED = 256  # checks waiting to be run ahead; past it the oldest are dropped (their rulings re-run)


def run_key(model_sha: str, input_sha: str, rows: int, settings: dict[str, Any]) -> str:
    """What makes two re-runs the same: the model, the check's input, how many of its first rows,
    and the task's settings (batch size, argument order, device)."""
    what = json.dumps([model_sha, input_sha, int(rows), settings], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(what.encode()).hexdigest()


class AheadRuns:
    """Checks to run ahead (a queue of check ids) and the outputs of those run (files in a folder
    of this process's own under `parent`, made at the first; the last KEPT). Each output is taken
    once, by the ruling it was made for."""

    def __init__(self, parent: Path, kept: int = KEPT) -> None:
        self._parent = parent
        self._folder: Path | None = None
        self._kept = kept
        self._outputs: OrderedDict[str, Path] = OrderedDict()
        self._queue: deque[str] = deque(maxlen=QUEUED)
        self._lock = threading.Lock()  # outputs are put and taken on the work pool's threads

    def queue(self, check_id: str) -> None:
        """A check that will need the referee was opened (or is about to be)."""
        self._queue.append(check_id)

    def next_check(self) -> str | None:
        """The oldest queued check, or None."""
        return self._queue.popleft() if self._queue else None

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._outputs

    def put(self, key: str, output: Path) -> None:
        """Keep `output` (moved into the folder) as the re-run `key`; the oldest past KEPT are dropped."""
        with self._lock:
            if self._folder is None:  # replicas may share the blob store's tmp folder: one each
                self._folder = Path(tempfile.mkdtemp(prefix="referee-ahead-", dir=self._parent))
            kept = self._folder / f"{key}.safetensors"
            os.replace(output, kept)
            self._outputs[key] = kept
            self._outputs.move_to_end(key)
            while len(self._outputs) > self._kept:
                _, old = self._outputs.popitem(last=False)
                old.unlink(missing_ok=True)

    def take(self, key: str, out: Path) -> bool:
        """Move the re-run `key`'s output to `out`; False when there is none."""
        with self._lock:
            kept = self._outputs.pop(key, None)
        if kept is None:
            return False
        try:
            os.replace(kept, out)
        except OSError:
            return False
        return True
