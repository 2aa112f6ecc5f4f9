"""The referee's review of contested claims: two nodes said a task's input is invalid or unsafe
(repositories.claims), so the referee runs the task as a node would, in its sandboxed child,
before either is believed: an inference or generation task's whole input as a ruling re-runs
rows, a training task's inner steps as a node's worker runs them (the kind's parts: add_parts).

A clean run proves the claims false: the task is pending again with no attempt spent. A run
that fails, for any reason (the program raised, the child hit its limits, the input is gone),
cannot prove them false, so they are confirmed as before reviews existed: a review can only
ever spare a task, never blame a node that a claim alone would not have blamed.

A kind may run its tasks in parts (add_parts: training): each part is one referee request that
steps for part of --referee-time-s from the state the part before left (review_parts.py), so a
task longer than one request is still run whole, and a part that hits the time limit (one step
longer than the request) is charged and tried again. Such a review ends: clean, when the last
part finishes; confirmed, when a part truly fails (the program raised, the memory limit, the
inputs gone) or when the parts have cost the task's referee budget (`budget_s`: BUDGET_FACTOR ×
the task's own time limit, which the submitter set for a node's run of it, at least one request).

Who could abuse it: two colluding nodes (their lie no longer fails the job: each keeps a
refusal and its streak reset; a task is reviewed once, later claims on it are refusals); a
submitter whose input fails only late in a shard (it costs the referee one run of that shard per
task, up to the task's budget, one request at a time). The referee makes one request of one
review per turn of its loop (manager.run_referee), after every ruling waiting, and turns go to
the review that has cost least so far: a review holds other rulings up by at most one request,
and many reviews share the referee rather than queue behind the longest. A restart loses at
most the part under way (and blames no one: a part cut short by the coordinator stopping is
not a verdict).
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
from coordinator.services.sandboxed import Part
from coordinator.services.verification.review_parts import Cost, ReviewParts
from tensorgrid.blobs import BlobStore
from tensorgrid.sandbox import SandboxFailure
from tensorgrid.sandbox.oneshot import TIMEOUT

log = logging.getLogger("tensorgrid.coordinator.verification")
# (model sha, task settings, input file, output file): the task's program over its input in the
# referee's child, as a ruling re-runs it (Verification._run)
Run = Callable[[str, dict[str, Any], Path, Path], None]
# (model sha, task settings, input file, state the part before reached or None, output file):
# one part of the task in the referee's child (sandboxed.train_task_part)
RunPart = Callable[[str, dict[str, Any], Path, Path | None, Path], Part]
Settled = Callable[[str, bool], None]  # (job id, job complete)
Verdict = tuple[bool, str] | None  # (the run was clean, what happened); None: not yet
# a review run in parts may cost the referee this many times the task's own time limit: its CPU
# may be slower than the nodes the job is for (a digits task: 1.0–1.1× a node worker's time)
BUDGET_FACTOR = 4.0


class Reviews:
    def __init__(self, rt: Runtime, store: Store, blobs: BlobStore, run: Run) -> None:
        self.rt = rt
        self.store = store
        self.blobs = blobs
        self._run = run  # a task's whole input, as a ruling re-runs rows (inference, generation)
        self._parts: dict[str, tuple[RunPart, str]] = {}  # task kind → its tasks run in parts
        self.progress = ReviewParts(blobs.root / "reviews")
        self.budget_factor = BUDGET_FACTOR
        self.reviewed = 0

    def add_parts(self, task_kind: str, part: RunPart, ran: str) -> None:
        """How the referee runs contested tasks of `task_kind` in parts, one request each
        (training: the inner steps as a node's worker runs them); `ran` says what a clean run
        did (the verdict's reason)."""
        self._parts[task_kind] = (part, ran)

    def budget_s(self, task: Contested) -> float:
        """The referee time a review in parts may cost: budget_factor × the task's time limit
        (what the submitter allows a node for it), and at least one request."""
        return max(self.rt.sandbox.time_s, self.budget_factor * task.time_limit_ms / 1000)

    async def review_pending(self, settled: Settled) -> None:
        """Review every contested task of an open job to its verdict (those a restart left too)."""
        while await self.review_next(settled):
            pass

    async def review_next(self, settled: Settled) -> bool:
        """Make one referee request for the contested task whose review has cost least so far
        (oldest first among equals): its whole run, or its next part. Whether there was one."""
        tasks = await self.rt.db_bulk(self.store.reviews.contested)
        self.progress.sweep({t.task_id for t in tasks})
        if not tasks:
            return False
        task = min(tasks, key=lambda t: self.progress.cost(t.task_id).spent_s)
        started = time.monotonic()
        verdict = await self.rt.refereed(self._verdict, task)
        if verdict is None:
            return not self.rt.stopping  # a stopping coordinator's referee answers nothing more
        clean, reason = verdict
        job_id = await self.rt.db(self.store.reviews.settle_review, task.task_id, clean, reason, self.rt.now_ms())
        self.progress.drop(task.task_id)
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
        return True

    def _verdict(self, task: Contested) -> Verdict:
        source = self.blobs.path_for(task.input_sha)
        if not task.model_sha or not source.exists():
            return False, "the referee cannot run it: its model or input is not in the blob store"
        if task.kind in self._parts:
            return self._part(task, source)
        try:
            settings = json.loads(task.settings)
            with tempfile.TemporaryDirectory(prefix="review-", dir=self.blobs.tmp_dir) as tmp:
                self._run(task.model_sha, settings, source, Path(tmp) / "out.safetensors")
        except SandboxFailure as e:
            return None if self.rt.stopping else (False, f"{e.kind}: {e}"[:500])
        except Exception as e:  # noqa: BLE001 - a run that did not end cleanly never disproves a claim
            return None if self.rt.stopping else (False, f"the referee could not run it: {type(e).__name__}: {e}"[:500])
        return True, "its program ran over the whole input"

    def _part(self, task: Contested, source: Path) -> Verdict:
        """The task's next part; a verdict once it ran whole, truly failed, or spent its budget."""
        run, ran = self._parts[task.kind]
        cost, budget = self.progress.cost(task.task_id), self.budget_s(task)
        if cost.spent_s >= budget:
            return False, (
                f"over its review budget: {cost.parts} parts took {cost.spent_s:.0f}s of the referee's "
                f"{budget:.0f}s and reached step {cost.step} of {cost.steps}"
            )
        started = time.monotonic()
        try:
            settings = json.loads(task.settings)
            state, out = self.progress.state(task.task_id), self.progress.next_state(task.task_id)
            part = run(task.model_sha, settings, source, state, out)
        except SandboxFailure as e:
            if self.rt.stopping:
                return None  # cut short by the coordinator stopping: no verdict, nothing charged
            if e.kind != TIMEOUT:
                return False, f"{e.kind}: {e}"[:500]
            # a step past the request's limit (a loaded machine?): charged, tried again until the budget is spent
            spent = cost.spent_s + time.monotonic() - started
            self.progress.charge(task.task_id, Cost(spent, cost.parts + 1, cost.step, cost.steps))
            log.warning(
                "a part of task %s's review timed out at step %d (%.0fs spent): %s",
                task.task_id[:12],
                cost.step,
                spent,
                e,
            )
            return None
        except Exception as e:  # noqa: BLE001 - a run that did not end cleanly never disproves a claim
            if self.rt.stopping:
                return None
            return False, f"the referee could not run it: {type(e).__name__}: {e}"[:500]
        if part.done:
            return True, ran
        self.progress.advance(task.task_id)
        spent = cost.spent_s + time.monotonic() - started
        self.progress.charge(task.task_id, Cost(spent, cost.parts + 1, part.step, part.steps))
        log.debug(
            "task %s's review reached step %d of %d (%.1fs spent)", task.task_id[:12], part.step, part.steps, spent
        )
        return None
