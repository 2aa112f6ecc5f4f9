"""The round manager: closes training rounds and opens the next ones, inside the coordinator.

One loop per coordinator process. It wakes when the api reports accepted results for a job
(poke) and at least once a second (deadlines, other replicas' results, a restart), looks at
each open training job's current round and, when the round may close (quorum reached, or
its deadline passed with at least one result), runs the outer step on a work thread and
commits the close in one transaction. The database is the only source of truth, so a
restarted coordinator simply carries on from the last closed round.

Audited results (services.training.audit) hold their round open until their audits
settle or the round's deadline passes; only results that passed an audit or were not drawn
for one go into the outer step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable

from coordinator.errors import Conflict
from coordinator.repositories.store import Store
from coordinator.repositories.training import rounds as store
from coordinator.repositories.training.rounds import RoundView
from coordinator.services.runtime import Runtime
from coordinator.services.training import planner
from coordinator.services.training.audit import Auditor, usable
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import TensorGridError

log = logging.getLogger("tensorgrid.coordinator")
TICK_S = 1.0


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
        self.audits = Auditor(rt, repos, blobs, audit_secret, self.torch_lock, self.poke)

    def poke(self, job_ids: Iterable[str]) -> None:
        """Results of these jobs were accepted: look at their rounds soon. Never blocks."""
        self._dirty.update(job_ids)
        self._wake.set()
        if not self._started:
            self._started = True
            self.rt.spawn(self._loop())

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

    async def advance(self, job_id: str) -> str:
        """Close the job's open round if it may close; returns what happened (for tests and logs)."""
        rt, blobs = self.rt, self.blobs
        view = await rt.db(store.round_view, self.engine, job_id)
        if view is None:
            self._files.pop(job_id, None)
            return "finished"
        spec, now = view.spec, rt.now_ms()
        audits, view = await self._settle_audits(view, now)
        if view is None:
            return "conflict"  # the round closed or the job ended meanwhile (another replica)
        if any(audits.get(slot) == "pending" for slot, _ in view.done) and now < view.deadline_ms:
            return "auditing"
        view = dataclasses.replace(view, done=tuple(d for d in view.done if usable(audits.get(d[0]))))
        have = len(view.done)
        if have < spec.quorum_workers and not (have and now >= view.deadline_ms):
            if have == 0 and now >= view.opened_ms + spec.max_attempts * spec.round_deadline_s * 1000:
                message = (
                    f"round {view.round} got no result in {spec.max_attempts} × round_deadline_s "
                    f"({spec.round_deadline_s}s): no node could finish its tasks in time"
                )
                return await self._fail(job_id, message)
            return "open"
        async with self.torch_lock:
            files = self._files.get(job_id)
            if files is None:
                parameters = await rt.work(planner.program_parameters, rt, spec, blobs)
                files = self._files[job_id] = await rt.work(planner.job_files, spec, blobs, parameters)
            results = await rt.work(planner.valid_results, view, blobs)
            if not results:
                message = f"round {view.round}: none of its {have} results is a valid pseudo-gradient"
                return await self._fail(job_id, message)
            try:
                closed = await rt.work(planner.close, rt, view, results, files, blobs)
            except TensorGridError as e:
                return await self._fail(job_id, f"round {view.round} could not be aggregated: {e}")
        try:
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
            self._files.pop(job_id, None)
            log.info("training job %s succeeded: weights %s", job_id, closed.weights.sha256)
            return "finished"
        return "closed"

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
        self._files.pop(job_id, None)
        return "failed"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
