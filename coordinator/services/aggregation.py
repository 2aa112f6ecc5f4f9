"""Aggregation: turn a complete job's accepted task outputs into its one result blob.

How is the kind's (`Kind.assemble`); a kind that finishes its jobs itself (training: the
round manager writes the final weights when the last round closes) is only told to look.
"""

from __future__ import annotations

import asyncio
import logging

from coordinator.errors import Conflict
from coordinator.repositories.jobs import JobRepository
from coordinator.services.kind import KindLookup
from coordinator.services.runtime import Runtime
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import TensorGridError

log = logging.getLogger("tensorgrid.coordinator")


class Aggregation:
    def __init__(self, rt: Runtime, jobs: JobRepository, blobs: BlobStore, kinds: KindLookup) -> None:
        self.rt = rt
        self.jobs = jobs
        self.blobs = blobs
        self.kinds = kinds
        self._aggregating: set[str] = set()

    async def resume(self) -> None:
        """Assemble what a previous run left complete but unassembled."""
        for job_id in await self.rt.db_bulk(self.jobs.jobs_to_aggregate):
            log.info("resuming aggregation of job %s", job_id)
            self.schedule(job_id)

    async def sweep_loop(self, interval_s: float) -> None:
        """Assemble jobs left complete but unassembled by another replica that died meanwhile.

        A job counts as left only when two sweeps in a row find it so: the replica that accepted
        its last result had a whole interval to assemble it, so live replicas rarely both do
        (and if they do, the second finds the job finished: Conflict)."""
        seen: set[str] = set()
        while True:
            await asyncio.sleep(interval_s)
            try:
                found = set(await self.rt.db_bulk(self.jobs.jobs_to_aggregate))
            except Exception:  # a DB hiccup must not end the loop
                log.exception("looking for unassembled jobs failed")
                continue
            for job_id in sorted(found & seen):
                log.info("assembling job %s, left complete by another replica or run", job_id)
                self.schedule(job_id)
            seen = found - self._aggregating

    def schedule(self, job_id: str) -> None:
        if job_id not in self._aggregating:
            self._aggregating.add(job_id)
            self.rt.spawn(self._aggregate(job_id))

    async def _aggregate(self, job_id: str) -> None:
        rt = self.rt
        try:
            job = await rt.db(self.jobs.get_job, job_id)
            kind = self.kinds.for_job(job.kind)
            if not kind.assembles:
                kind.after_accept([job_id])  # e.g. the open round has all its results: it closes
                return
            outputs = await rt.db_bulk(self.jobs.task_outputs, job_id)
            try:
                result = await rt.work(kind.assemble, outputs, self.blobs)
                await rt.db(self.jobs.finish_job, job_id, result, "", rt.now_ms())
                log.info("job %s succeeded: result %s (%d bytes)", job_id, result.sha256, result.size)
            except TensorGridError as e:
                log.warning("job %s failed to assemble: %s", job_id, e)
                await rt.db(self.jobs.finish_job, job_id, None, f"could not assemble the result: {e}", rt.now_ms())
        except Conflict:
            pass  # another replica finished it
        except Exception:
            log.exception("aggregating job %s failed; the next sweep retries it", job_id)
        finally:
            self._aggregating.discard(job_id)
            rt.hub.notify(job_id)
