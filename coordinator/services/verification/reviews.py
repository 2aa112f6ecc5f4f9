"""The referee's review of contested claims: two nodes said a task's input is invalid or unsafe
(repositories.claims), so the referee runs the task as a node would, in its sandboxed child,
before either is believed: an inference or generation task's whole input as a ruling re-runs
rows, a training task's inner steps as a node's worker runs them (the kind's run: add_run).

A clean run proves the claims false: the task is pending again with no attempt spent. A run
that fails, for any reason (the program raised, the child hit its limits, the input is gone),
cannot prove them false, so they are confirmed as before reviews existed: a review can only
ever spare a task, never blame a node that a claim alone would not have blamed.

Who could abuse it: two colluding nodes (their lie no longer fails the job: each keeps a
refusal and its streak reset; a task is reviewed once, later claims on it are refusals); a
submitter whose input fails only late in a shard (it costs the referee one run of that shard per
task, the same run a ruling makes, under the referee's limits, one at a time). A review takes
at most the referee's time limit; a training task it cannot finish within it (long, on the
coordinator's CPU) is confirmed as before.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.repositories.reviews import Contested
from coordinator.repositories.store import Store
from coordinator.services.runtime import Runtime
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox import SandboxFailure

log = logging.getLogger("tensorgrid.coordinator.verification")
# (model sha, task settings, input file, output file): the task's program over its input in the
# referee's child, as a ruling re-runs it (Verification._run)
Run = Callable[[str, dict[str, Any], Path, Path], None]
Settled = Callable[[str, bool], None]  # (job id, job complete)


class Reviews:
    def __init__(self, rt: Runtime, store: Store, blobs: BlobStore, run: Run) -> None:
        self.rt = rt
        self.store = store
        self.blobs = blobs
        self._run = run
        # task kind → how the referee runs its tasks when not as a ruling re-runs rows, and what a clean run did
        self._runs: dict[str, tuple[Run, str]] = {}
        self.reviewed = 0

    def add_run(self, task_kind: str, run: Run, ran: str) -> None:
        """How the referee runs contested tasks of `task_kind` (training: the whole task, as a
        node's worker runs it), rather than as a ruling re-runs rows; `ran` says what a clean
        run did (the verdict's reason)."""
        self._runs[task_kind] = (run, ran)

    async def review_pending(self, settled: Settled) -> None:
        """Review every contested task of an open job, oldest first (those a restart left too)."""
        reviews = self.store.reviews
        for task in await self.rt.db_bulk(reviews.contested):
            started = time.monotonic()
            clean, reason = await self.rt.refereed(self._verdict, task)
            job_id = await self.rt.db(reviews.settle_review, task.task_id, clean, reason, self.rt.now_ms())
            self.reviewed += 1
            log.info(
                "reviewed the claims on task %s in %.3fs: %s (%s)",
                task.task_id[:12],
                time.monotonic() - started,
                "disproved" if clean else "confirmed",
                reason,
            )
            if job_id:
                settled(job_id, False)

    def _verdict(self, task: Contested) -> tuple[bool, str]:
        """(the run was clean, what happened)."""
        source = self.blobs.path_for(task.input_sha)
        if not task.model_sha or not source.exists():
            return False, "the referee cannot run it: its model or input is not in the blob store"
        run, ran = self._runs.get(task.kind, (self._run, "its program ran over the whole input"))
        try:
            settings = json.loads(task.settings)
            with tempfile.TemporaryDirectory(prefix="review-", dir=self.blobs.tmp_dir) as tmp:
                run(task.model_sha, settings, source, Path(tmp) / "out.safetensors")
        except SandboxFailure as e:
            return False, f"{e.kind}: {e}"[:500]
        except Exception as e:  # noqa: BLE001 - a run that did not end cleanly never disproves a claim
            return False, f"the referee could not run it: {type(e).__name__}: {e}"[:500]
        return True, ran
