"""Serving as the coordinator runs it: the router plus the few database moments of an endpoint.

The database is touched when an endpoint starts (its job turns running), when the coordinator
starts (the running endpoints are loaded), and when one is deleted (its credits are flushed,
then its job is cancelled). Never per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from coordinator.repositories.store import Store
from coordinator.services.runtime import Runtime
from coordinator.services.serving.model import Endpoint
from coordinator.services.serving.router import Router
from tensorgrid.errors import SpecError
from tensorgrid.spec import EndpointSpec, parse_spec
from tensorgrid.types import JobInfo

log = logging.getLogger("tensorgrid.coordinator.serving")
ENDPOINT = EndpointSpec.kind_name()  # the job kind endpoints are (services never import kinds)
RECEIPT_GRACE_S = 2.0  # a delete waits at most this long for the receipts of answers given
RECEIPT_POLL_S = 0.01


SECURED_POLL_S = 0.5  # how often a paid endpoint's escrow lock is looked for until confirmed


class Serving:
    def __init__(
        self, rt: Runtime, store: Store, router: Router, withheld: Callable[[str], bool] | None = None
    ) -> None:
        """withheld(job_id): whether a priced job's escrow lock is not confirmed yet (the
        ledger's result_withheld; blocking); None: a grid without a chain, nothing to wait for."""
        self.rt = rt
        self.store = store
        self.router = router
        self.withheld = withheld

    @staticmethod
    def serves(job: JobInfo) -> bool:
        """Whether the job is an endpoint (its cancel is a delete: Serving.delete)."""
        return job.kind == ENDPOINT

    async def load(self) -> int:
        """Serve every endpoint job left queued or running; returns how many."""
        jobs = await self.rt.db_bulk(self.store.jobs.live_jobs_of_kind, ENDPOINT)
        for job in jobs:
            await self.opened(job)
        return len(jobs)

    async def opened(self, job: JobInfo) -> None:
        """A job was submitted (or found at start): serve it if it is a live endpoint."""
        if job.kind != ENDPOINT or job.state.finished:
            return
        try:
            spec = parse_spec(job.spec_json)
        except SpecError as e:  # a spec this coordinator took once and no longer parses
            log.error("endpoint %s has a spec that does not parse (%s): not served", job.job_id, e)
            return
        assert isinstance(spec, EndpointSpec)
        await self.rt.db(self.store.jobs.start_job, job.job_id, self.rt.now_ms())  # queues the lock if priced
        ep = self.router.add_endpoint(job.job_id, job.submitter, spec, job.created_ms)
        if self.withheld is not None and await self.rt.db(self.withheld, job.job_id):
            ep.secured = False
            self.rt.spawn(self._until_secured(ep))

    async def _until_secured(self, ep: Endpoint) -> None:
        """Open a paid endpoint to calls once its escrow lock is confirmed; end it if the lock
        failed (the submitter closed the escrow first: the ledger ends the job)."""
        assert self.withheld is not None
        while ep.state == "running":
            await asyncio.sleep(SECURED_POLL_S)
            if (await self.rt.db(self.store.jobs.get_job, ep.job_id)).state.finished:
                self.router.end_endpoint(ep.job_id, "deleted")
                log.warning("endpoint %s ended before its escrow lock was confirmed", ep.job_id[:12])
                return
            if not await self.rt.db(self.withheld, ep.job_id):
                ep.secured = True
                log.info("endpoint %s: escrow lock confirmed, taking calls", ep.job_id[:12])
                return

    async def delete(self, job_id: str, submitter: str) -> JobInfo:
        """Stop serving, write what was served (never voided by a delete), cancel the job.

        The flush comes first, and only once the receipts of answers already given are in
        (they follow a micro-batch's replies on the node's stream; RECEIPT_GRACE_S at most),
        so a request answered before the delete is paid from the escrow. A receipt later
        still is credited by a periodic flush if the escrow is not being released yet, else
        never (ledger.credits.credit_batches): never a credit the closed escrow would refuse.
        """
        self.router.end_endpoint(job_id, "deleted")
        give_up = time.monotonic() + RECEIPT_GRACE_S
        while self._unreceipted(job_id) and time.monotonic() < give_up:
            await asyncio.sleep(RECEIPT_POLL_S)
        await self.router.accounting.flush()
        return await self.rt.db(self.store.jobs.cancel_job, job_id, submitter, self.rt.now_ms())

    def _unreceipted(self, job_id: str) -> int:
        """Answers of the endpoint's replicas (released ones included) whose receipt is due:
        those of a micro-batch (batch 0: a request that ran in none, never receipted)."""
        return sum(
            1
            for link in self.router.links.values()
            for replica in (*link.replicas.values(), *link.retired.values())
            if replica.endpoint.job_id == job_id
            for answer in replica.answered.values()
            if answer.batch > 0
        )

    async def run(self, stop: asyncio.Event) -> None:
        """The router's scaling loop and the accounting's flushes, until stop is set."""
        await asyncio.gather(self.router.run(stop), self.router.accounting.run(stop))
