"""The referee's review of contested claims: two nodes said a task's input is invalid or unsafe
(repositories.claims), so the referee runs the task as a node would, in its sandboxed child,
before either is believed: an inference or generation task's rows as a ruling re-runs rows, a
training task's inner steps as a node's worker runs them (the kind's parts: add_parts).

A clean run proves the claims false: the task is pending again with no attempt spent (but not
a CUDA run's program error or timeout, which a CPU run cannot disprove: for such a claimant the
verdict is undecided, repositories.claim_devices). A run
that fails (the program raised, the child hit its memory limit, the input is gone) cannot prove
them false, so they are confirmed as before reviews existed: a review can only ever spare a
task, never blame a node that a claim alone would not have blamed. A run in which the program
(or its input) raised ends the task at once (Ruling.final: any node would meet that failure),
and its job with it unless the job goes on without the task (training: the task ends alone,
repositories.reviews);
the referee's own limits, a crash or a missing blob leave the task its attempts. A run the referee cannot
finish proves nothing either way (its CPU may be far slower than the nodes the job was sized
for): the review is undecided, and more distinct nodes settle the claims (repositories.claims).

Every review runs in parts of one referee request each, so a task longer than one request is
still run whole, and a part over the request's time limit is charged and tried again (a smaller
one, for rows). A training task's part steps for part of --referee-time-s from the state the part
before left (review_parts.py); an inference or generation task's part is a run of some of its
rows (review_parts.RowPart: the whole input at once when the task's time limit fits in a part,
else whole batches sized by the pace of the parts before). The review ends: clean, when the last
part finishes; confirmed, when a part truly fails; undecided, when the parts have cost the task's
referee budget (`budget_s`: --review-budget-factor, 4 by default, × the task's own time limit,
which the submitter set for a node's run of it, at least one request), or when --review-stalls
(2) parts of the smallest size (one batch of rows, one inner step) timed out in a row: the task
cannot be split small enough for a request (config.ReviewSettings says why those defaults).
Before undecided reviews existed both confirmed the claims, so two colluding nodes could fail any
job too heavy for the coordinator's CPU just by claiming.

A confirmed review also says how far the run got, because its claimants are paid for that share
of the task (repositories.ledger.claim_pay): a training task's inner steps done before the one
that failed, those of its parts before and those the failing part's child counted (its error
answer's "step": the runner tells the child after each step, sandbox_child._Steps), bounded by
what the coordinator knows (review_parts.steps_done: at least the parts before's, at most the
task's steps; the submitter's program runs in that child and could forge the count, but only up,
which pays its claimants more of its own escrow, or down to what the parts before proved); for
rows, the rows before the failing batch. A part of rows longer than one
batch that raises confirms the claims but is not yet the verdict: the review halves it (a
bisection, review_parts.RowPart.after_failure: about log2(rows / batch) requests, together at
most those rows once more, within the same budget) until one batch is left; a part over the time
limit or a spent budget ends the search with the rows found so far (fewer, never more).

Who could abuse it: two colluding nodes (their lie no longer fails the job: each keeps a
refusal and its streak reset; a task is reviewed once, later claims on it are refusals); a
submitter whose input fails only late in a shard (it costs the referee one run of that shard per
task, up to the task's budget, one request at a time; a task it cannot finish then goes to more
nodes: repositories.claims says who could abuse that). The referee makes one request of one
review per turn of its loop (manager.run_referee), after every ruling waiting, and turns go to
the submitter whose reviews under way have cost least, then to its cheapest review (turns.py): a
review holds other rulings up by at most one request, and many reviews, or one submitter's many,
share the referee rather than queue behind the longest. A restart loses at
most the part under way (and blames no one: a part cut short by the coordinator stopping is
not a verdict).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from coordinator.config import ReviewSettings
from coordinator.repositories.claims import CLEAN, FAILED, UNDECIDED
from coordinator.repositories.reviews import Contested
from coordinator.repositories.store import Store
from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import PART_SHARE, Part
from coordinator.services.verification.memory import Measure
from coordinator.services.verification.memory_parts import MeasuredPart
from coordinator.services.verification.review_parts import Cost, ReviewParts, RowPart, steps_done
from coordinator.services.verification.ruling import Ruling, Verdict, measured_parts, measured_whole
from coordinator.services.verification.turns import fair_turn
from tensorgrid.blobs import BlobStore
from tensorgrid.processes import cpu_cores
from tensorgrid.sandbox import SandboxFailure
from tensorgrid.sandbox.oneshot import TIMEOUT
from tensorgrid.workloads import tensorfile

log = logging.getLogger("tensorgrid.coordinator.verification")
# (model sha, task settings, input file, output file): the task's program over its input in the
# referee's child, as a ruling re-runs it (Verification._run)
Run = Callable[[str, dict[str, Any], Path, Path], None]
# (model sha, task settings, input file, state the part before reached or None, output file):
# one part of the task in the referee's child (sandboxed.train_task_part)
RunPart = Callable[[str, dict[str, Any], Path, Path | None, Path], Part]
Settled = Callable[[str, bool], None]  # (job id, job complete)


class Reviews:
    def __init__(
        self, rt: Runtime, store: Store, blobs: BlobStore, run: Run, settings: ReviewSettings | None = None
    ) -> None:
        """settings: --review-budget-factor and --review-stalls (default: their defaults)."""
        settings = settings or ReviewSettings()
        self.rt = rt
        self.store = store
        self.blobs = blobs
        self._run = run  # a task's whole input, as a ruling re-runs rows (inference, generation)
        self._parts: dict[str, tuple[RunPart, str]] = {}  # task kind → its tasks run in parts
        self.measures: dict[str, Measure] = {}  # task kind → its run measured for memory claims (add_measure)
        self.measured_parts: dict[str, MeasuredPart] = {}  # task kind → the same in parts (memory_parts.py)
        self.progress = ReviewParts(blobs.root / "reviews")
        self.budget_factor = settings.budget_factor
        self.stalls = settings.stalls  # smallest parts timed out in a row that make a review undecided
        self.over, self.within = settings.over_limit, settings.within_limit  # claims of a time limit (_timed)
        self.reviewed = 0

    def add_parts(self, task_kind: str, part: RunPart, ran: str) -> None:
        """How the referee runs contested tasks of `task_kind` in parts, one request each
        (training: the inner steps as a node's worker runs them); `ran` says what a clean run
        did (the verdict's reason)."""
        self._parts[task_kind] = (part, ran)

    def add_measure(self, task_kind: str, measure: Measure) -> None:
        """How the referee measures the peak memory of a contested task of `task_kind` whose claims
        say it needs more than its memory limit (memory.py; Verification.add_measure registers it);
        a kind without one keeps a node's out-of-memory report its own failure (repositories.claims)."""
        self.measures[task_kind] = measure

    def add_measured_parts(self, task_kind: str, part: MeasuredPart) -> None:
        """add_measure for a kind whose run the referee measures in parts (training: memory_parts.py)."""
        self.measured_parts[task_kind] = part

    def budget_s(self, task: Contested) -> float:
        """The referee time a review in parts may cost: budget_factor × the task's time limit
        (what the submitter allows a node for it), and at least one request."""
        return max(self.rt.sandbox.time_s, self.budget_factor * task.time_limit_ms / 1000)

    async def review_pending(self, settled: Settled) -> None:
        """Review every contested task of an open job to its verdict (those a restart left too)."""
        while await self.review_next(settled):
            pass

    async def review_next(self, settled: Settled) -> bool:
        """Make one referee request for the contested task whose turn it is (fair_turn): its whole
        run, or its next part. Whether there was one."""
        tasks = await self.rt.db_bulk(self.store.reviews.contested)
        self.progress.sweep({t.task_id for t in tasks})
        if not tasks:
            return False
        task = fair_turn(tasks, lambda task_id: self.progress.cost(task_id).spent_s)
        started = time.monotonic()
        verdict = await self.rt.refereed(self._verdict, task)
        if verdict is None:
            return not self.rt.stopping  # a stopping coordinator's referee answers nothing more
        outcome, reason, work, final = verdict
        settle = functools.partial(self.store.reviews.settle_review, final=final)
        job_id = await self.rt.db(settle, task.task_id, outcome, reason, self.rt.now_ms(), work)
        self.progress.drop(task.task_id)
        self.reviewed += 1
        log.info(
            "reviewed the claims on task %s in %.3fs: %s (%s)",
            task.task_id[:12],
            time.monotonic() - started,
            {CLEAN: "disproved", FAILED: "confirmed"}.get(outcome, "undecided: for more nodes to settle"),
            reason,
        )
        if job_id:
            settled(job_id, False)
        return True

    def _verdict(self, task: Contested) -> Verdict:
        source = self.blobs.path_for(task.input_sha)
        if not task.model_sha or not source.exists():
            return Ruling(FAILED, "the referee cannot run it: its model or input is not in the blob store")
        if task.memory and task.kind in self.measures:
            return self._memory(task, source)
        if task.memory and task.kind in self.measured_parts:
            return self._memory_parts(task, source)
        cost, budget = self.progress.cost(task.task_id), self.budget_s(task)
        unit = "step" if task.kind in self._parts else "row"
        if cost.failed and (cost.stalls or cost.spent_s >= budget):  # stop looking for the failing batch
            return self._failed(task, source, {}, cost, cost.failed, raised=True)
        if cost.stalls >= self.stalls:
            # a time-limit claim: those rows alone took more than a request, after the rows that ran
            low = cost.low_s + cost.stall_low_s
            past = self._timed(task, low, math.inf, cost.step, cost.steps) if task.limit else None
            if past is not None:
                return past
            return Ruling(UNDECIDED, (
                f"one {'inner step' if unit == 'step' else 'batch'} is longer than a referee request: "
                f"{cost.stalls} parts of the smallest size timed out at {unit} {cost.step} of {cost.steps}"
            ))  # fmt: skip
        if cost.spent_s >= budget:
            return Ruling(UNDECIDED, (
                f"over its review budget: {cost.parts} parts took {cost.spent_s:.0f}s of the referee's "
                f"{budget:.0f}s and reached {unit} {cost.step} of {cost.steps}"
            ))  # fmt: skip
        started = time.monotonic()
        retry = replace(cost, parts=cost.parts + 1)  # where a part over the time limit leaves it
        smallest = task.kind in self._parts  # a training part stops after its first step past its share
        settings: dict[str, Any] = {}
        part: RowPart | None = None
        try:
            settings = json.loads(task.settings)
            if smallest:
                return self._part(task, source, settings, cost, started)
            part = RowPart.next(cost, settings, source, self._share_s(), task.time_limit_ms / 1000)
            if part.located(cost):  # the failing batch starts at cost.step: every row before it ran
                return self._failed(task, source, settings, cost, cost.failed, raised=True)
            retry, smallest = part.after_timeout(retry), part.smallest
            return self._rows(task, source, settings, cost, part, started)
        except SandboxFailure as e:
            if self.rt.stopping:
                return None  # cut short by the coordinator stopping: no verdict, nothing charged
            if e.kind != TIMEOUT:
                said = f"{e.kind}: {e}"[:500]
                rows = self._rows_of(source) if part is not None and e.raised and not part.smallest else 0
                if part is not None and rows > part.unit:  # confirmed: now where it failed
                    spent = cost.spent_s + time.monotonic() - started
                    self.progress.charge(task.task_id, part.after_failure(cost, spent, said, rows))
                    return None
                raised, reported = e.raised or bool(cost.failed), e.details.get("step")
                return self._failed(task, source, settings, cost, said, raised=raised, reported=reported)
            if cost.failed:  # looking for the failing batch: a part too long ends the search
                return self._failed(task, source, settings, cost, cost.failed, raised=True)
            # past the request's limit (a loaded machine, a part too long): charged, tried again
            # (rows: a smaller part) until the budget is spent or the smallest part stalls
            took = time.monotonic() - started
            stalls = cost.stalls + 1 if smallest else 0
            stalled = self._bounds(took)[0] if smallest else 0.0  # at least what the part took
            charged = replace(retry, spent_s=cost.spent_s + took, stalls=stalls, stall_low_s=stalled)
            self.progress.charge(task.task_id, charged)
            spent = charged.spent_s
            log.warning(
                "a part of task %s's review timed out at %d of %d (%.0fs spent): %s",
                task.task_id[:12],
                cost.step,
                cost.steps,
                spent,
                e,
            )
            return None
        except Exception as e:  # noqa: BLE001 - a run that did not end cleanly never disproves a claim
            if self.rt.stopping:
                return None
            said = f"the referee could not run it: {type(e).__name__}: {e}"[:500]
            return self._failed(task, source, settings, cost, said)

    def _memory(self, task: Contested, source: Path) -> Verdict:
        """A claim that the program needs more than the task's memory limit: one measured run of
        the whole task (ruling.measured_whole)."""
        rows, threads = self._rows_of(source), self.rt.sandbox.threads or cpu_cores()
        return measured_whole(self.rt, self.measures[task.kind], task, source, self.over, self.within, rows, threads)

    def _memory_parts(self, task: Contested, source: Path) -> Verdict:
        """The same claim on a task measured in parts (training), one part a turn (ruling.measured_parts)."""
        run = self.measured_parts[task.kind]
        return measured_parts(self.rt, run, self.progress, task, source, self.over, self.within, self.budget_s(task))

    def _failed(
        self,
        task: Contested,
        source: Path,
        settings: dict[str, Any],
        cost: Cost,
        said: str,
        *,
        raised: bool = False,
        reported: object = None,
    ) -> Ruling:
        """The claims are confirmed: `said`, and how far the run got (what the claimants are paid
        for): the rows the parts ran cleanly before the failing batch, or the inner steps done
        before the failing one (the parts before's, and those the failing part's child `reported`,
        bounded by review_parts.steps_done), of the task's; raised: a part of the run raised
        (cost.failed is only ever set by one), which ends the task."""
        total = cost.steps
        if not total and task.kind in self._parts:
            total = int((settings.get("inner") or {}).get("steps") or 0)
        elif not total:
            total = self._rows_of(source)
        done = min(cost.step, total)
        if task.kind in self._parts:
            done = steps_done(reported, done, total)
        return Ruling(FAILED, said, (done, total), final=raised)

    def _timed(
        self, task: Contested, low_s: float, high_s: float, done: int, total: int, *, finished: bool = False
    ) -> Verdict:
        """A claim that the program runs past the task's time limit, against the referee's run of it:
        its clean parts reached `done` of the task's `total` units (rows, inner steps) and would take
        at least low_s and at most high_s on the referee's CPU (_bounds); finished: that was all of
        them. At least `over` × the limit: confirmed, and the task fails for good (final), its
        claimants paid for what the limit's time reaches at that pace; a whole run of at most
        `within` × it: disproved; in between: undecided; None: not yet (more parts to run). Each
        verdict on the bound that cannot be wrong for it: a machine busy with other work stretches
        neither, so it can neither confirm a claim (fail a job) nor disprove one (blame a node)."""
        limit_s = task.time_limit_ms / 1000
        unit = "inner steps" if task.kind in self._parts else "rows"
        if limit_s > 0 and low_s > self.over * limit_s:
            reached = min(total, int(done * limit_s / low_s + 1e-6))  # a node's run within the limit, at this pace
            said = (
                f"its program needs more than its time limit of {limit_s:g}s on the referee's CPU: {done} of its "
                f"{total} {unit} took at least {low_s:.1f}s of it, over {self.over:g}× the limit"
            )
            return Ruling(FAILED, said, (reached, total), final=True)
        if not finished:
            return None
        if limit_s <= 0 or high_s <= self.within * limit_s:
            said = f"its program ran over the whole input in at most {high_s:.1f}s, within {self.within:g}×"
            return Ruling(CLEAN, f"{said} its time limit of {limit_s:g}s")
        return Ruling(UNDECIDED, (
            f"its program ran over the whole input in {low_s:.1f}-{high_s:.1f}s of the referee's CPU, too near its "
            f"time limit of {limit_s:g}s to tell (between {self.within:g}× and {self.over:g}× it)"
        ))  # fmt: skip

    def _bounds(self, wall_s: float) -> tuple[float, float]:
        """What the referee's last run, which took wall_s, would take on its CPU with nothing else on
        it: at least its CPU time over the threads it can use at once, at most its CPU time (it runs
        on one thread at the least) and at most wall_s. The referee runs niced, behind everything
        else on a busy machine, so its wall time alone would let load (a colluder's calls, a busy
        database) confirm a claim on a job the reference runs within its limit. Where the CPU time
        cannot be read: wall_s both ways."""
        referee = getattr(self.rt, "referee", None)
        cpu = referee.last_cpu_s() if referee is not None else None
        if referee is None or cpu is None:
            return wall_s, wall_s
        return min(wall_s, cpu / max(1, referee.threads)), min(wall_s, cpu)

    @staticmethod
    def _rows_of(source: Path) -> int:
        """The rows of a task's input; 0 when the referee cannot read it (the run got nowhere)."""
        try:
            return tensorfile.batch_rows(tensorfile.read_header(source))
        except Exception:  # noqa: BLE001 - a stranger's file: anything it raises means unreadable
            return 0

    def _share_s(self) -> float:
        """The referee time a part of rows aims at: PART_SHARE of a request (0: no limit)."""
        return PART_SHARE * self.rt.sandbox.time_s if self.rt.sandbox.time_s > 0 else 0.0

    def _part(self, task: Contested, source: Path, settings: dict[str, Any], cost: Cost, started: float) -> Verdict:
        """The task's next part of inner steps; a verdict once it ran whole."""
        run, ran = self._parts[task.kind]
        state, out = self.progress.state(task.task_id), self.progress.next_state(task.task_id)
        part = run(task.model_sha, settings, source, state, out)
        took = time.monotonic() - started
        low, high = self._bounds(took)
        low, high = cost.low_s + low, cost.high_s + high
        if task.limit:
            timed = self._timed(task, low, high, part.step, part.steps, finished=part.done)
            if timed is not None:
                return timed
        elif part.done:
            return Ruling(CLEAN, ran)
        self.progress.advance(task.task_id)
        spent = cost.spent_s + took
        self.progress.charge(task.task_id, Cost(spent, cost.parts + 1, part.step, part.steps, low_s=low, high_s=high))
        log.debug(
            "task %s's review reached step %d of %d (%.1fs spent)", task.task_id[:12], part.step, part.steps, spent
        )
        return None

    def _rows(
        self, task: Contested, source: Path, settings: dict[str, Any], cost: Cost, part: RowPart, started: float
    ) -> Verdict:
        """The task's next part of rows (all of them on the first request if the task's time
        limit fits in one); a verdict once every row ran."""
        with tempfile.TemporaryDirectory(prefix="review-", dir=self.blobs.tmp_dir) as tmp:
            rows_in = source
            if not part.whole:
                rows_in = Path(tmp) / "part.safetensors"
                tensorfile.gather_rows(source, list(range(part.first, part.end)), rows_in)
            self._run(task.model_sha, settings, rows_in, Path(tmp) / "out.safetensors")
        took = time.monotonic() - started
        low, high = self._bounds(took)
        low, high = cost.low_s + low, cost.high_s + high
        finished = part.whole or part.end >= part.rows
        if not cost.failed and task.limit:
            total = self._rows_of(source) if part.whole else part.rows
            timed = self._timed(task, low, high, total if finished else part.end, total, finished=finished)
            if timed is not None:
                return timed
        elif not cost.failed and finished:
            ran = "its program ran over the whole input" + (f" ({cost.parts + 1} parts)" if cost.parts else "")
            return Ruling(CLEAN, ran)
        spent = cost.spent_s + took
        after = part.after_clean(cost, spent, took, self._share_s())
        self.progress.charge(task.task_id, replace(after, low_s=low, high_s=high))
        log.debug("task %s's review ran rows to %d of %d (%.1fs spent)", task.task_id[:12], part.end, part.rows, spent)
        return None
