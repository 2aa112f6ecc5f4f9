"""The verification ladder at run time: decide which results to check, build check tasks,
compare check outputs, referee disputes by re-executing the rows (in a sandboxed child,
services.sandboxed), and keep under-staked nodes away from jobs they could cheat on."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from coordinator.config import ReviewSettings
from coordinator.repositories.store import Store
from coordinator.repositories.tasks import TaskRecord
from coordinator.repositories.verification.checks import PARKED, CheckPlan, Verdict
from coordinator.repositories.verification.rulings import Ahead, Ruling, RulingInfo
from coordinator.repositories.verification.store import CheckInfo
from coordinator.services.runtime import Runtime
from coordinator.services.sandboxed import Part, SandboxFailure, referee
from coordinator.services.verification.ahead import AheadRuns, run_key
from coordinator.services.verification.canaries import EarlyCanaries, fresh_id
from coordinator.services.verification.compare import load_rows, rows_match
from coordinator.services.verification.foresee import Foresight
from coordinator.services.verification.policy import VerificationPolicy
from coordinator.services.verification.referee import blames, judge, soundness
from coordinator.services.verification.reviews import Reviews
from coordinator.services.verification.runs import InParts, KindRuns, MeasureRun, PartReplay, Replay, Score
from coordinator.services.verification.stakes import StakeGate
from tensorgrid.blobs import BlobStore
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import BlobRef, Lease
from tensorgrid.workloads import tensorfile

log = logging.getLogger("tensorgrid.coordinator.verification")
Settled = Callable[[str, bool], None]  # (job id, job complete): a ruling changed the job
REFEREE_IDLE_S = 1.0


class Verification:
    """The runtime's database and work pool run repository calls and blob work off the event loop."""

    def __init__(
        self,
        rt: Runtime,
        store: Store,
        blobs: BlobStore,
        secret: bytes,
        stake_of: Callable[[str], int] | None,
        reviews: ReviewSettings | None = None,
    ) -> None:
        self.rt = rt
        self.store = store
        self.blobs = blobs
        self._secret = secret  # row samples and check decisions are unpredictable to nodes
        self._db = rt.db
        self._work = rt.work
        # under-staked nodes kept away from jobs they could cheat on (stakes.py); None: no chain
        self.stakes = StakeGate(stake_of, rt.work) if stake_of is not None else None
        self._policies: dict[str, tuple[VerificationPolicy | None, int]] = {}
        self._disputes = asyncio.Event()
        self.runs = KindRuns(rt, blobs)  # how the referee runs, scores and measures each task kind
        self._torch = self.runs.lock  # one referee child at a time
        self._replays, self._scores, self._run = self.runs.replays, self.runs.scores, self.runs.run
        self.rulings = 0
        # confirmations re-run while their checks run on checkers, not after (ahead.py)
        self.ahead = AheadRuns(Path(blobs.tmp_dir))
        # an untrusted node's leased shards: the rows its result's check will have the referee
        # re-run, re-run while the node computes (foresee.py)
        self.foresight = Foresight(
            rt,
            store,
            blobs,
            self.ahead,
            policies=self.policy,
            known=self._policies.get,
            draw=lambda policy, streak, task, attempt, rows: self._draw(policy, streak, self._rng(task, attempt), rows),
            run=self._run,
            scored=self._scores,
        )
        # two nodes' claims that a task's input is bad, checked by running the task (reviews.py)
        self.reviews = Reviews(rt, store, blobs, self._run, reviews)
        # an untrusted node's shard's canary, leased with the shard, not after its result (canaries.py)
        self.canaries = EarlyCanaries(
            rt,
            store,
            blobs,
            secret=secret,
            policies=self.policy,
            gather=self._gather,
            verdict=lambda info, output, checker: self._verdict(info, self.blobs.path_for(output), checker),
        )

    async def policy(self, job_id: str, tasks_total: int = 0) -> tuple[VerificationPolicy | None, int]:
        """(policy or None, required stake in wei) of a job; policies never change, so cached."""
        cached = self._policies.get(job_id)
        if cached is not None:
            return cached
        stored = await self._db(self.store.verification.job_policy, job_id)
        if stored is None:
            out: tuple[VerificationPolicy | None, int] = (None, 0)
        else:
            job = await self._db(self.store.jobs.get_job, job_id)
            spec = VerificationSpec(**stored[0])
            out = (VerificationPolicy(spec, job.tasks_total, 0), stored[1])
        self._policies[job_id] = out
        return out

    async def examine(
        self, task: TaskRecord, node: str, output: BlobRef, *, referee_alone: bool = False
    ) -> tuple[CheckPlan | None, Verdict | None]:
        """For an inference result that passed the integrity rung: a check to open, or a verdict.
        referee_alone: an untrusted subject's spot-check goes to the referee, not to a node
        (CheckPlan.direct; the task kind says whether its referee re-runs checks as nodes do)."""
        info = await self._db(self.store.verification.check_info, task.task_id, node)
        if info is not None and not info.subject_output:
            return None, PARKED  # a canary leased early, its subject's result not yet verified
        if info is not None:
            return None, await self._work(self._verdict, info, self.blobs.path_for(output.sha256), node)
        policy, _ = await self.policy(task.job_id)
        if policy is None or not policy.enabled:
            return None, None
        # trust is per job: earned on paid jobs of other submitters (repositories/verification/trust.py)
        streak = await self._db(self.store.verification.streak, node, task.job_id, policy.spec.trust_after)
        rng = self._rng(task.task_id, task.attempt)
        rows = self._draw(policy, streak, rng, task.rows)
        if rows is None:  # a trusted node's lucky draw: accepted (and paid) unchecked
            await self.canaries.unchecked(task.job_id, task.task_id, task.attempt, policy, task.rows)
            return None, None
        ref = await self._work(self._gather, task.input, list(rows))
        canary = None
        if (order := self.canaries.order(policy, task.task_id, task.attempt, task.rows)) is not None:
            # the canary leased early with the shard, if it was, is this one (same id, input, rows)
            shuffled = await self._work(self._gather, task.input, list(order))
            canary = CheckPlan(self.canaries.canary_id(task.task_id, task.attempt), shuffled, order)
        # an untrusted subject's check always ends in a ruling on these rows: the referee makes
        # it alone (direct) or, where a node still runs the check, its re-run can be made ahead
        ahead = streak < policy.spec.trust_after
        direct = ahead and referee_alone and policy.spec.mode == "spotcheck"
        check_id = self._fresh_id("check", task.task_id, task.attempt)
        return CheckPlan(check_id, ref, rows, canary, ahead and not direct, direct), None

    @staticmethod
    def _draw(policy: VerificationPolicy, streak: int, rng: random.Random, task_rows: int) -> tuple[int, ...] | None:
        """Whether a result of task_rows rows by a node with this streak is checked (the first
        draw of the task's rng) and which of its rows (the next): None when it is not. examine
        and foresee.py draw the same: a run ahead of the result is the ruling's."""
        rate = policy.check_rate(streak)
        if rng.random() >= rate:
            return None
        m = policy.sample_rows(rate, task_rows)
        return tuple(sorted(rng.sample(range(task_rows), m)))

    def _fresh_id(self, what: str, task_id: str, attempt: int) -> str:
        """A task id no node can tell from an ordinary task's (those are random too)."""
        return fresh_id(self._secret, what, task_id, attempt)

    def _rng(self, task_id: str, attempt: int) -> random.Random:
        seed = hmac.new(self._secret, f"sample:{task_id}:{attempt}".encode(), hashlib.sha256).digest()
        return random.Random(seed)

    def _gather(self, source: BlobRef, rows: list[int]) -> BlobRef:
        tmp = self.blobs.temp_path("check-")
        try:
            tensorfile.gather_rows(self.blobs.path_for(source.sha256), rows, tmp)
            return self.blobs.put_file(tmp)
        finally:
            os.unlink(tmp)

    def _verdict(self, info: CheckInfo, output: Path, checker: str = "") -> Verdict:
        mine = load_rows(output)
        subject = load_rows(self.blobs.path_for(info.subject_output), info.rows)

        def cls(node: str) -> str:  # CUDA tolerance when either side ran on CUDA
            return "cuda" if node in info.cuda or checker in info.cuda else "cpu"

        agrees = bool(mine) and rows_match(subject, mine, cls(info.subject_node))
        peers = tuple(
            node
            for node, sha in info.earlier
            if bool(mine) and rows_match(load_rows(self.blobs.path_for(sha)), mine, cls(node))
        )
        return Verdict(agrees, peers)

    # -- the referee: the coordinator re-executes disputed rows itself ------------------------

    def add_replay(self, task_kind: str, replay: Replay, score: Score | None = None) -> None:
        """How the referee re-runs checks of tasks whose settings name `task_kind` (default: inference)
        and, optionally, how it checks the subject's claim more cheaply first (see _reexecute)."""
        self._replays[task_kind] = replay
        if score is not None:
            self._scores[task_kind] = score

    def add_review(self, task_kind: str, part: PartReplay, ran: str) -> None:
        """How the referee runs a contested task of `task_kind` whose shards rulings never re-run
        (training: the whole task, as a node's worker runs it), in parts of one referee request
        each (reviews.py); `ran` says what a clean run did."""

        def run(model_sha: str, settings: dict[str, Any], source: Path, state: Path | None, out: Path) -> Part:
            with self._torch:
                return part(self.blobs.path_for(model_sha), source, settings, state, out)

        self.reviews.add_parts(task_kind, run, ran)

    def add_measure(self, runs: str, measure: MeasureRun | InParts, task_kinds: Iterable[str]) -> None:
        """How the referee measures the peak memory of a run of a task whose settings name `runs`
        as their task kind (none named: inference), for a claim that its program needs more than the
        task's memory limit (memory.py); a node's out-of-memory report on a task of `task_kinds` is
        then such a claim (repositories.claims). A check task runs as its job's tasks do, so its
        measure is chosen by its settings, as its replay is (_run); one referee child at a time.
        InParts (training): the run is measured in parts, its state carried between them (memory_parts.py)."""
        if isinstance(measure, InParts):
            part = functools.partial(self.runs.measure_part, part=measure.part)
            for task_kind in task_kinds:
                self.reviews.add_measured_parts(task_kind, part)
            return
        self.runs.measures[runs] = measure
        for task_kind in task_kinds:
            self.reviews.add_measure(task_kind, self.runs.measure)

    def check_opened(self, plan: CheckPlan) -> None:
        """A check was committed: queue its referee's re-run ahead if its ruling is certain."""
        if plan.ahead:
            self.ahead.queue(plan.check_task_id)
        self.dispute_raised()

    def leased(self, leases: list[Lease], node: str) -> None:
        """Leases the scheduler granted `node` (Scheduler.granted, after their commit): an
        untrusted node's inference shards have their checks' rows re-run while it computes
        (foresee.py), so the rulings on their results only compare."""
        if self.foresight.leased(leases, node):
            self._disputes.set()
        self.canaries.leased(leases, node)

    def dispute_raised(self) -> None:
        """A check result came in that may have opened a dispute: look for rulings to make now."""
        self._disputes.set()

    async def run_referee(self, settled: Settled, warm: bool = True) -> None:
        """Rule on disputed checks as they come (and those a previous run left pending).
        warm: start the referee's child now, so the first job's intake probe does not wait for
        its start (seconds); else it starts with the first request made of it (intake's probe,
        a ruling, a serving check), and a grid that never needs it never starts one."""
        if warm:
            try:
                await self.rt.refereed(referee(self.rt, self.blobs).warm)
            except SandboxFailure as e:
                log.warning("the referee's sandbox did not start (it is retried with the first request): %s", e)
        while True:
            try:
                await asyncio.wait_for(self._disputes.wait(), REFEREE_IDLE_S)
            except TimeoutError:
                pass
            self._disputes.clear()
            try:
                # the database thread: this look runs every REFEREE_IDLE_S, and inline (SQLite's
                # Runtime.db) it would hold up the calls the event loop is answering
                for info in await self.rt.db_bulk(self.store.verification.pending_rulings):
                    await self._rule(info, settled)
                if await self.canaries.compare_parked(settled):  # armed by those rulings, or by checks
                    self._disputes.set()  # a canary that disagrees waits for a ruling
                # one request of one review a turn: a long review holds the rulings up by one request
                reviewing = await self.reviews.review_next(settled)
                if await self.foresight.next() or await self._run_ahead() or reviewing:
                    self._disputes.set()  # rulings first, then the next check to run ahead
            except Exception:  # a DB hiccup must not end the loop
                log.exception("ruling on disputed checks failed; will retry")

    async def _rule(self, info: RulingInfo, settled: Settled) -> None:
        now = self.rt.now_ms()
        started = time.monotonic()
        try:
            ruling, how = await self.rt.refereed(self._reexecute, info)
        except Exception as e:  # noqa: BLE001 - any failure to run means "cannot referee", never a verdict
            log.warning("cannot referee check %s: %s", info.check_id[:12], e)
            job_id = await self._db(self.store.verification.fail_ruling, info.check_id, f"{type(e).__name__}: {e}", now)
            if job_id:
                settled(job_id, False)
            return
        outcome = await self._db(self.store.verification.apply_ruling, info.check_id, ruling, now)
        self.rulings += 1
        if outcome is not None:
            log.info(  # benchmarks.scaling and benchmarks.generation read the time, rows and how
                "ruled on check %s in %.3fs (%d rows, %s): subject %s, wrong checkers %d",
                info.check_id[:12],
                time.monotonic() - started,
                min(len(info.rows), info.rows_limit or len(info.rows)),
                how,
                "right" if ruling.subject_right else "wrong",
                len(info.checkers) - len(ruling.right_checkers),
            )
            settled(*outcome)

    def _reexecute(self, info: RulingInfo) -> tuple[Ruling, str]:
        """Run the chain's rows (or the first rows_limit) through the job's model here; compare
        everyone. Returns the ruling and how it was reached ("scored" or "re-run").

        A task kind with a Score (generation) first checks the subject's claim on those rows
        without re-running them in full: when every row scores consistent and the ruling that
        gives blames nobody (the common case: confirming two untrusted nodes' agreement), that
        is the ruling. Anything else (a row that does not score, a disagreeing checker, a
        mismatch within tolerance) re-runs the rows in full and rules on that, as without one.
        Whenever a ruling would blame someone, the re-execution must first prove sound
        (referee.soundness): otherwise the ruling names the program not verifiable.
        """
        rows = info.rows[: info.rows_limit] if info.rows_limit else info.rows
        head = list(range(len(rows)))
        load = lambda sha, r=None: load_rows(self.blobs.path_for(sha), r)  # noqa: E731
        with tempfile.TemporaryDirectory(prefix="referee-", dir=self.blobs.tmp_dir) as tmp:
            out = Path(tmp) / "out.safetensors"
            source = self.blobs.path_for(info.input_sha)
            if info.rows_limit:  # the check input's rows are a random sample already: take its head
                source = Path(tmp) / "in.safetensors"
                tensorfile.gather_rows(self.blobs.path_for(info.input_sha), head, source)
            scored = self._score(info, rows, source, Path(tmp))
            if scored is not None:
                ruling = judge(info, rows, load_rows(scored), load)
                if not blames(ruling, info):
                    ref = self.blobs.put_file(scored)
                    return Ruling(ref.sha256, ruling.subject_right, ruling.right_checkers), "scored"
            # the same re-run, made while the check ran on its checker (ahead.py), or made now
            ran_ahead = self.ahead.take(run_key(info.model_sha, info.input_sha, len(rows), info.settings), out)
            if not ran_ahead:
                self._run_model(info, source, out)
            mine = load_rows(out)
            if not mine:
                raise RuntimeError("the referee's own output could not be read")
            ruling = judge(info, rows, mine, load)
            if blames(ruling, info):
                shard = self.blobs.path_for(info.shard_sha) if info.shard_sha else None
                reason = soundness(shard, rows, mine, lambda src, dst: self._run_model(info, src, dst), Path(tmp))
                if reason:
                    return Ruling("", False, (), reason), "re-run"
            ref = self.blobs.put_file(out)
        return Ruling(ref.sha256, ruling.subject_right, ruling.right_checkers), "ahead" if ran_ahead else "re-run"

    def _score(self, info: RulingInfo, rows: list[int], source: Path, tmp: Path) -> Path | None:
        """The scored output of the subject's claim on `rows` (the check input `source`), when its
        task kind has a Score and every row scores consistent; else None (re-run in full)."""
        score = self._scores.get(str(info.settings.get("task_kind", "")))
        if score is None:
            return None
        claim, out = tmp / "claim.safetensors", tmp / "scored.safetensors"
        try:
            tensorfile.gather_rows(self.blobs.path_for(info.subject_output), rows, claim)
            with self._torch:
                consistent = score(self.blobs.path_for(info.model_sha), source, claim, out, info.settings)
        except Exception as e:  # noqa: BLE001 - scoring is a shortcut: any failure means re-run in full
            log.warning("could not score check %s (re-running it in full): %s", info.check_id[:12], e)
            return None
        return out if consistent and all(consistent) else None

    def _run_model(self, info: RulingInfo, source: Path, out: Path) -> None:
        """The job's model over `source`, in a sandboxed child under the referee's limits. A
        child over its limits raises SandboxFailure: _rule records that the referee could not
        run (fail_ruling), which blames no one."""
        self._run(info.model_sha, info.settings, source, out)

    async def _run_ahead(self) -> bool:
        """Re-run one queued check's confirmation rows before its ruling is asked for (ahead.py);
        whether one was run (more may be queued). A check already answered or settled, or one a
        ruling confirms by scoring (not by re-running), is skipped."""
        while (check_id := self.ahead.next_check()) is not None:
            job = await self.rt.db_bulk(self.store.verification.ahead, check_id)
            if job is None or str(job.settings.get("task_kind", "")) in self._scores:
                continue
            key = run_key(job.model_sha, job.input_sha, job.rows, job.settings)
            if key in self.ahead:
                continue
            started = time.monotonic()
            try:
                await self.rt.refereed(self._make_ahead, job, key)
            except Exception as e:  # noqa: BLE001 - a run ahead is a head start only: its ruling re-runs
                log.info("could not run check %s ahead (its ruling will re-run it): %s", check_id[:12], e)
                return True
            log.info(  # benchmarks.scaling counts this time as the referee's
                "ran check %s ahead in %.3fs (%d rows)", check_id[:12], time.monotonic() - started, job.rows
            )
            return True
        return False

    def _make_ahead(self, job: Ahead, key: str) -> None:
        """The first job.rows rows of the check's input through the model, as _reexecute runs them."""
        with tempfile.TemporaryDirectory(prefix="referee-", dir=self.blobs.tmp_dir) as tmp:
            source, out = Path(tmp) / "in.safetensors", Path(tmp) / "out.safetensors"
            tensorfile.gather_rows(self.blobs.path_for(job.input_sha), list(range(job.rows)), source)
            self._run(job.model_sha, job.settings, source, out)
            self.ahead.put(key, out)
