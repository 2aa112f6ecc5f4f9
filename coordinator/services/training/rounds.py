"""The round manager: closes training rounds and opens the next ones, inside the coordinator.

One loop per coordinator process. It wakes when the api reports accepted results for a job
(poke) and at least once a second (deadlines, other replicas' results, a restart), looks at
each open training job's current round and, when the round may close (quorum reached, or
its deadline passed with at least one result, or at least one result and every other task of the
round failed for good: repositories.tasks.end_task; none and all failed: the job fails), runs
the outer step on the referee's thread and commits the close in one transaction. The database
is the only source of truth, so a restarted coordinator simply carries on from the last closed
round.

Audited results (services.training.audit) hold their round open until their audits
settle or the round's deadline passes; only results that passed an audit or were not drawn
for one go into the outer step.

One slow job holds up the others' rounds, and a round held open looks like a stuck one: an
advance that has taken SLOW_S is logged, with the step it waits on (and again every SLOW_S),
and so is a round its audits have held open for SLOW_S (which results, waiting for what).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable

from coordinator.errors import Conflict
from coordinator.repositories.store import Store
from coordinator.repositories.training import audits as audit_store
from coordinator.repositories.training import rounds as store
from coordinator.repositories.training.rounds import RoundView
from coordinator.services.runtime import Runtime
from coordinator.services.training import planner
from coordinator.services.training.audit import Auditor, usable
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import TensorGridError

log = logging.getLogger("tensorgrid.coordinator")
TICK_S = 1.0
SLOW_S = 60.0


@dataclasses.dataclass
class _Advancing:
    """The advance under way: its job, since when (monotonic), its step, warnings so far."""

    job_id: str
    since: float
    step: str = "reading the round"
    warned: int = 0


class RoundManager:
    """Closes the rounds of every open training job; `audits` checks their audited results."""

    def __init__(
        self, rt: Runtime, repos: Store, blobs: BlobStore, audit_secret: bytes, tick_s: float = TICK_S
    ) -> None:
        self.rt = rt
        self.engine = repos.engine
        self.blobs = blobs
        self.tick_s = tick_s
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._files: dict[str, planner.JobFiles] = {}
        self._started = False
        self.torch_lock = asyncio.Lock()  # torch.export loading is not thread-safe: one job at a time
        self.slow_s = SLOW_S
        self._advancing: _Advancing | None = None
        self._held: dict[str, tuple[int, int, int]] = {}  # job → (round, held since, last logged or 0) ms
        self.audits = Auditor(rt, repos, blobs, audit_secret, self.torch_lock, self.poke)

    def poke(self, job_ids: Iterable[str]) -> None:
        """Results of these jobs were accepted: look at their rounds soon. Never blocks."""
        self._dirty.update(job_ids)
        self._wake.set()
        if not self._started:
            self._started = True
            self.rt.spawn(self._loop())
            self.rt.spawn(self._watch())

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.tick_s)
            except TimeoutError:
                pass
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            try:
                jobs = set(await self.rt.db_bulk(store.open_training_jobs, self.engine))
            except Exception:  # a DB hiccup must not end the loop
                log.exception("listing training jobs failed")
                continue
            # Poked jobs first: their results just came in and a node may be waiting on the round.
            for job_id in sorted(dirty & jobs) + sorted(jobs - dirty):
                try:
                    await self.advance(job_id)
                except Exception:
                    log.exception("advancing training job %s failed; will retry", job_id)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(self.tick_s * 5, self.slow_s / 4))
            self.check_slow(time.monotonic())

    def check_slow(self, now: float) -> None:
        """Log the advance under way if it has run slow_s (and each slow_s more), naming its step."""
        a = self._advancing
        if a is None or now - a.since < self.slow_s * (a.warned + 1):
            return
        a.warned += 1
        log.warning(
            "closing rounds is slow: job %s has been advanced for %.0f s, now %s (the other jobs' rounds wait)",
            a.job_id[:12], now - a.since, a.step,
        )  # fmt: skip

    def _at(self, step: str) -> None:
        if self._advancing is not None:
            self._advancing.step = step

    async def advance(self, job_id: str) -> str:
        """Close the job's open round if it may close; returns what happened (for tests and logs)."""
        self._advancing = _Advancing(job_id, time.monotonic())
        try:
            return await self._advance(job_id)
        finally:
            self._advancing = None

    async def _advance(self, job_id: str) -> str:
        rt, blobs = self.rt, self.blobs
        view = await rt.db(store.round_view, self.engine, job_id)
        if view is None:
            self._forget(job_id)
            return "finished"
        spec, now = view.spec, rt.now_ms()
        self._at("settling the round's audits (a replay waits for the referee and torch_lock)")
        audits, view = await self._settle_audits(view, now)
        if view is None:
            return "conflict"  # the round closed or the job ended meanwhile (another replica)
        if any(audits.get(slot) == "pending" for slot, _ in view.done) and now < view.deadline_ms:
            await self._held_open(view, now)
            return "auditing"
        # ended: no more results can come (no task open, no result's audit still pending past the deadline)
        ended = view.open_tasks == 0 and not any(audits.get(slot) == "pending" for slot, _ in view.done)
        view = dataclasses.replace(view, done=tuple(d for d in view.done if usable(audits.get(d[0]))))
        have = len(view.done)
        if have < spec.quorum_workers and not (have and (now >= view.deadline_ms or ended)):
            if have == 0 and ended:
                why = await rt.db(store.last_ended, self.engine, job_id)  # e.g. over its memory limit
                why = why or "its events say why"
                message = f"round {view.round}: every one of its tasks failed for good; the last: {why}"
                return await self._fail(job_id, message)
            if have == 0 and now >= view.opened_ms + spec.max_attempts * spec.round_deadline_s * 1000:
                message = (
                    f"round {view.round} got no result in {spec.max_attempts} × round_deadline_s "
                    f"({spec.round_deadline_s}s): no node could finish its tasks in time"
                )
                return await self._fail(job_id, message)
            return "open"
        self._at("waiting for torch_lock (held by an audit's replay)")
        async with self.torch_lock:
            files = self._files.get(job_id)
            if files is None:
                self._at("loading the job's programs (referee) and files")
                parameters = await rt.refereed(planner.program_parameters, rt, spec, blobs)
                files = self._files[job_id] = await rt.work(planner.job_files, spec, blobs, parameters)
            self._at("checking the results (work threads)")
            results = await rt.work(planner.valid_results, view, blobs)
            if not results:
                message = f"round {view.round}: none of its {have} results is a valid pseudo-gradient"
                return await self._fail(job_id, message)
            try:
                self._at("aggregating and evaluating (the referee's thread and child)")
                closed = await rt.refereed(planner.close, rt, view, results, files, blobs)
            except TensorGridError as e:
                return await self._fail(job_id, f"round {view.round} could not be aggregated: {e}")
        try:
            self._at("committing the close (database)")
            final = await rt.db(store.close_round, self.engine, view, closed, rt.now_ms())
            rt.hub.work_available()
        except Conflict:
            return "conflict"  # closed by another replica, or the job ended meanwhile
        finally:
            rt.hub.notify(job_id)
        log.info(
            "job %s round %d/%d closed: %d workers, held-out loss %s accuracy %s",
            job_id[:12],
            view.round + 1,
            spec.rounds,
            len(closed.slots),
            _fmt(closed.eval_loss),
            _fmt(closed.eval_accuracy),
        )
        if final:
            self._forget(job_id)
            log.info("training job %s succeeded: weights %s", job_id, closed.weights.sha256)
            return "finished"
        return "closed"

    def _forget(self, job_id: str) -> None:
        """The job's round closed for good (it finished or failed): drop what was kept for it."""
        self._files.pop(job_id, None)
        self._held.pop(job_id, None)

    async def _held_open(self, view: RoundView, now: int) -> None:
        """Log a round its audits have held open for slow_s (and each slow_s more): which results,
        waiting for what. A checkpoint never revealed holds it until the round's deadline."""
        held = self._held.get(view.job_id)
        if held is None or held[0] != view.round:  # a round held open for the first time
            held = self._held[view.job_id] = (view.round, now, 0)
        _, since, logged = held
        slow_ms = int(self.slow_s * 1000)
        if now - max(since, logged) < slow_ms:
            return
        self._held[view.job_id] = (view.round, since, now)
        waiting = []
        for a in await self.rt.db(audit_store.round_audits, self.engine, view.job_id, view.round):
            if a.state == audit_store.PENDING:
                missing = sorted(set(a.steps) - set(a.revealed))
                what = f"checkpoints {missing} not revealed" if missing else "its replay"
                waiting.append(f"task {a.task_id[:12]}/{a.attempt} of {a.node}: {what}")
        log.warning(
            "job %s round %d held open %.0f s by its audits (%s); it closes without them at its deadline in %.0f s",
            view.job_id[:12], view.round + 1, (now - since) / 1000, "; ".join(waiting) or "settling",
            (view.deadline_ms - now) / 1000,
        )  # fmt: skip

    async def _settle_audits(self, view: RoundView, now: int) -> tuple[dict[int, str], RoundView | None]:
        """Settle what can be settled of the round's audits; the round as it stands afterwards
        (a failed audit puts its task back to pending: its result is no longer among the done)."""
        audits = await self.audits.settle_round(view, now)
        fresh = await self.rt.db(store.round_view, self.engine, view.job_id)
        return audits, fresh if fresh is not None and fresh.round == view.round else None

    async def _fail(self, job_id: str, message: str) -> str:
        log.warning("training job %s failed: %s", job_id, message)
        try:
            await self.rt.db(store.fail_training, self.engine, job_id, message, self.rt.now_ms())
        except Conflict:
            return "conflict"
        finally:
            self.rt.hub.notify(job_id)
        self._forget(job_id)
        return "failed"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
