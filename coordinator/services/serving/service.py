"""Serving as the coordinator runs it: the router plus the few database moments of an endpoint.

The database is touched when an endpoint starts (its job turns running), when the coordinator
starts (the running endpoints are loaded), when one is deleted (its credits are flushed, then
its job is cancelled), and by `sync` every SYNC_S. Never per request.

Several coordinator replicas (one PostgreSQL database, README "Several coordinator replicas").
Endpoints, replicas and calls live in each replica's memory; what they share is the database.
So every replica serves every live endpoint, and each places it on the nodes whose Serve
streams reached it:
- `sync` (every SYNC_S) opens the live endpoints another replica created, ends those another
  replica deleted (or the ledger ended), and re-reads each budget's credited wei (others'
  flushes count against it too); a call naming an endpoint this replica has not seen yet opens
  it at once (`discover`: one primary-key read, as any unknown job id costs).
- A node keeps one Serve stream, to the replica its other calls use (tensorgrid.failover). When
  that replica dies the stream breaks with UNAVAILABLE, the node moves to the next address and
  opens the stream there; that replica assigns the endpoints' replicas to it (connect → fill).
  The node keeps its idle replicas' loaded children for a while and names their endpoints in
  its ServeHello; those go to it first (links.connect, placement), so the endpoint answers
  again within about a second of the death instead of after a cold start.
- A replica holding no ready and no warming replica of an endpoint answers its calls UNAVAILABLE
  with a retry hint: the failover client moves to the next address at once (a unary call is
  replayed there within the same call), so a caller whose list starts with a replica no node
  uses is redirected, and a caller whose replica died reaches the one the nodes moved to.
- Each replica keeps min_replicas of its own when nodes are split between replicas: an
  endpoint may hold up to min_replicas per coordinator replica (more warm capacity, no more
  cost: the escrow pays per answered request, not per replica).

Billing. A batch is paid by the replica that routed its requests and verified its receipt (the
receipt's task id derives from a replica id that replica drew; credits are keyed by it), so a
request is paid at most once whichever replicas live or die. A replica writes what it counted
once a second; so that a SIGKILL between counting and writing loses nothing, it tells the node
of each batch it counted (ServeDown.counted: endpoint, task id, requests paid, and an HMAC tag
under a key derived from the coordinator's verification secret, which every replica reads from
the database and no node sees). The node keeps these 10 s and hands them to the next replica in
its ServeHello; that replica checks the tag and counts the batch like its own (written once by
task id: if the dead replica did write it, nothing more). What stays unpaid: a batch whose
receipt had not reached the dead replica yet (tens of milliseconds after its answers), the
nodes' loss, never charged. Budgets: each replica admits calls against its own view of credited
wei, refreshed every SYNC_S; credit_batches never credits past the budget, so two replicas racing
at the budget's end can answer a few requests that go unpaid, never charge the escrow more than
it holds.

Who could abuse this:
- a node handing in counted batches: it cannot make a tag (the key is the coordinator's), a tag
  names its node (another node's batch is refused), and a batch handed in again, or written by
  the replica that counted it, is paid once (the credit's task id); a refused tag is a protocol
  violation. A counted batch the dead replica would have voided after a sampled check is paid
  (the check died with it).
- a node attaching to both replicas (two Serve streams with one session) gets replicas from each
  and is paid by each only for receipts that replica verified against bytes it routed; a receipt
  handed to the other replica names a replica id it never assigned and is refused unpaid
  (tests/unit/coordinator/test_serving_replicas.py).
- a node naming endpoints it does not hold as warm: it is preferred for them, which it could
  get by connecting first anyway; it gets one extra replica only while the endpoint has no
  ready one here, scaling trims it, and names of endpoints not served here are ignored (64 read).
- a caller naming random endpoint ids at a replica: one primary-key read each, then NotFound,
  the same as for any unknown job id; it opens nothing but live endpoint jobs.
- a hostile replica is the coordinator operator (same key, same database): out of this scope,
  as for one replica (THREAT_MODEL.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from coordinator.errors import NotFound
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
SYNC_S = 2.0  # how often endpoints other replicas opened or ended (and budgets' credits) are read


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
        self._opening: set[str] = set()  # endpoints being opened (submit, load, sync, discover)

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
        """A job was submitted (or found at start, or by sync): serve it if it is a live endpoint."""
        if job.kind != ENDPOINT or job.state.finished or job.job_id in self._opening:
            return
        if job.job_id in self.router.endpoints:
            return
        try:
            spec = parse_spec(job.spec_json)
        except SpecError as e:  # a spec this coordinator took once and no longer parses
            log.error("endpoint %s has a spec that does not parse (%s): not served", job.job_id, e)
            return
        assert isinstance(spec, EndpointSpec)
        self._opening.add(job.job_id)
        try:
            await self.rt.db(self.store.jobs.start_job, job.job_id, self.rt.now_ms())  # queues the lock if priced
            ep = self.router.add_endpoint(job.job_id, job.submitter, spec, job.created_ms)
            if self.withheld is not None and await self.rt.db(self.withheld, job.job_id):
                ep.secured = False
                self.rt.spawn(self._until_secured(ep))
        finally:
            self._opening.discard(job.job_id)

    async def discover(self, job_id: str) -> bool:
        """A call named an endpoint this replica does not serve: open it if the database holds it
        live (another replica created it since the last sync). True when it is served now."""
        try:
            job = await self.rt.db(self.store.jobs.get_job, job_id)
        except NotFound:
            return False
        await self.opened(job)
        return job_id in self.router.endpoints

    async def sync(self) -> None:
        """One look at the database: serve the live endpoints other replicas opened, end the ones
        deleted or ended elsewhere, and re-read each budget's credited wei."""
        # only endpoints served before the read can be judged by it: one opened during the read
        # (submitted here meanwhile) is live though the read did not see it
        before = [ep for ep in self.router.endpoints.values() if ep.state in ("running", "spent")]
        jobs = await self.rt.db_bulk(self.store.jobs.live_jobs_of_kind, ENDPOINT)
        live = {job.job_id for job in jobs}
        for ep in before:
            if ep.job_id not in live and ep.state in ("running", "spent"):
                log.info("endpoint %s ended on another replica: no longer served here", ep.job_id[:12])
                self.router.end_endpoint(ep.job_id, "deleted")
        for job in jobs:
            if job.job_id not in self.router.endpoints:
                await self.opened(job)
        await self.router.accounting.refresh([j for j in live if j in self.router.endpoints])

    async def _sync_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SYNC_S)
            if stop.is_set():
                return
            try:
                await self.sync()
            except Exception:  # the loop must outlive a database hiccup
                log.exception("looking for endpoints other replicas changed failed; trying again")

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
        """The router's scaling loop, the accounting's flushes and the replicas' sync, until stop is set."""
        await asyncio.gather(
            self.router.run(stop), self.router.accounting.run(stop), self.router.checks.run(stop), self._sync_loop(stop)
        )
