"""The router: endpoints, replicas and in-flight requests in memory; no database per request.

How a call is routed, failed over and answered: calls.py (Calls, which the Router is). The node
side of the Serve stream (replies, receipts, replica states) arrives through `on_up`; what
goes down waits in each NodeLink's outbox for the stream handler (api/serving.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable

from coordinator.errors import Conflict, NotFound
from coordinator.services.serving import placement
from coordinator.services.serving.batches import counted
from coordinator.services.serving.calls import Calls
from coordinator.services.serving.errors import (
    DeadlineExceeded,
    ServingError,
)
from coordinator.services.serving.hooks import Accounting, Checks, NoAccounting, NoChecks, Reran, ServedBatch
from coordinator.services.serving.links import RECEIPT_WAIT_S, wall_ms_now
from coordinator.services.serving.model import (
    ASSIGNED,
    DRAINING,
    READY,
    Endpoint,
    NodeLink,
    Replica,
    ReplicaGone,
)
from coordinator.services.serving.once import Once
from coordinator.services.serving.rerun_waits import RerunWaits
from coordinator.services.serving.stats import EndpointStats, RequestSink
from tensorgrid import serde
from tensorgrid.spec import EndpointSpec
from tensorgrid.types import Domain
from tensorgrid.v1 import serving_pb2

log = logging.getLogger("tensorgrid.coordinator.serving")


class Router(Calls):
    """Endpoints and their replicas on the nodes holding a Serve stream (docs/SERVING.md)."""

    def __init__(
        self,
        domain: Domain,
        accounting: Accounting | None = None,
        checks: Checks | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = wall_ms_now,
        metrics: RequestSink | None = None,
        counted_key: bytes = b"",
    ) -> None:
        """domain: the EIP-712 domain receipts are signed under; clock: monotonic seconds
        (scaling, expiries); wall_ms: the unix clock deadlines are sent in; metrics: where
        every endpoint's request outcomes are also counted (services.metrics); counted_key:
        the key of BatchCounted tags (batches.counted_key; empty: none sent, none taken)."""
        super().__init__(domain, clock, wall_ms, counted_key)
        self.accounting: Accounting = accounting if accounting is not None else NoAccounting()
        self.checks: Checks = checks if checks is not None else NoChecks()
        self.metrics = metrics
        self.endpoints: dict[str, Endpoint] = {}
        self.receipted = 0  # batches whose receipt verified (refused ones: Links.mismatches)
        self.replica_counts: dict[str, int] = {}  # replicas by state, as of the last tick (metrics)
        self.reruns = RerunWaits()  # checks' reruns waiting for their batch's receipt
        self.data_port = 0  # the data port offered to inference replicas (datalink.py); 0: none
        self.once = Once()  # keyed requests' answers, for their repeats (once.py)

    # ---- endpoints ----------------------------------------------------------------------------
    def add_endpoint(self, job_id: str, submitter: str, spec: EndpointSpec, created_ms: int) -> Endpoint:
        """Serve a running endpoint job (again: the existing one)."""
        ep = self.endpoints.get(job_id)
        if ep is None:
            settings = json.dumps(spec.replica_settings(), sort_keys=True).encode()
            stats = EndpointStats(self.clock, self.metrics)
            ep = Endpoint(job_id, submitter, spec, created_ms, stats=stats, settings_json=settings)
            self.endpoints[job_id] = ep
            self.fill(ep)
        return ep

    def end_endpoint(self, job_id: str, state: str = "deleted") -> Endpoint | None:
        """Stop serving: every replica released, calls in flight refused. A spent endpoint
        (its budget used up, still holding its replicas) ends too."""
        ep = self.endpoints.get(job_id)
        if ep is not None and ep.state in ("running", "spent"):
            ep.state = state
            for replica in list(ep.replicas.values()):
                self.release(replica, f"the endpoint is {state}")
        return ep

    def endpoint_for(self, caller: str, job_id: str, operator: bool = False) -> Endpoint:
        """The endpoint if `caller` may use it (its submitter, or the operator); else NotFound."""
        ep = self.endpoints.get(job_id)
        if ep is None or not (operator or ep.submitter == caller):
            raise NotFound(f"no endpoint {job_id} among your endpoints")
        return ep

    # ---- calls --------------------------------------------------------------------------------
    async def rerun(self, endpoint_id: str, data: bytes, seed: int, exclude_node: str) -> Reran | None:
        """Checks' Rerun: one input again on a ready replica of another node; None if none
        answered. The request is an ordinary one on the node's stream, so its micro-batch is
        receipted like any other; `accepted` marks it a rerun (unpaid, not drawn for a check:
        checks never recurse) and hands the batch to the returned Reran.receipted."""
        ep = self.endpoints.get(endpoint_id)
        if ep is None or ep.state != "running":
            return None
        try:
            replica = self.pick(ep, exclude_node)
        except (ServingError, Conflict):
            return None
        # it rides with a request only where one micro-batch runs both: never ahead of a
        # request it would hold up (a generation, a replica that runs one request at a time)
        ride = ep.spec.serves == "inference" and ep.spec.max_batch > 1
        call = self.send(replica, data, seed, self.wall_ms() + ep.spec.request_timeout_ms, streaming=False, ride=ride)
        receipted = self.reruns.add(call)  # found by its ids as they are when its receipt comes
        try:
            reply = await call.done
        except (ReplicaGone, DeadlineExceeded):
            reply = None
        finally:
            self.forget(call)
        if reply is None or reply.HasField("error"):
            self.reruns.unreceipted(call)
            return None
        asyncio.get_running_loop().call_later(RECEIPT_WAIT_S + 1.0, self.reruns.unreceipted, call)
        return Reran(replica.node, bytes(reply.output), call.request_id, receipted)

    def refused(self, replica: Replica, request_ids: list[int]) -> None:
        """A check waiting on one of these requests' receipt learns now that none will count."""
        if self.reruns:
            self.reruns.refused(replica.replica_id, request_ids)

    def on_caught(self, batch: ServedBatch, reason: str) -> None:
        """Checks' OnCaught: the node is barred from the endpoint and its replicas released."""
        ep = self.endpoints.get(batch.endpoint_id)
        if ep is None:
            return
        ep.barred.add(batch.node)
        log.warning("node %s caught on endpoint %s: %s", batch.node, ep.job_id[:12], reason)
        for replica in [r for r in ep.replicas.values() if r.node == batch.node]:
            self.release(replica, f"caught: {reason}")
        self.fill(ep)

    # ---- placement and scaling ----------------------------------------------------------------
    def fill(self, ep: Endpoint) -> None:
        """Place replicas until the endpoint holds min_replicas (as far as nodes allow)."""
        while ep.state == "running" and ep.live() < ep.spec.min_replicas:
            if self.assign(ep) is None:
                return

    def assign(self, ep: Endpoint) -> Replica | None:
        link = placement.choose_node(self.links.values(), ep, self.clock())
        return None if link is None else self.assign_on(ep, link)

    def assign_on(self, ep: Endpoint, link: NodeLink) -> Replica | None:
        if not placement.fits(link, ep, self.clock()):
            return None
        replica = Replica(secrets.token_hex(32), ep, link, assigned_at=self.clock())
        ep.replicas[replica.replica_id] = link.replicas[replica.replica_id] = replica
        spec = ep.spec
        # a generation streams its tokens through the agent: only inference goes direct
        direct = self.data_port if spec.serves == "inference" else 0
        if direct:
            replica.data_token = secrets.token_bytes(32)
        link.send(
            serving_pb2.ServeDown(
                assign=serving_pb2.ReplicaAssign(
                    endpoint_id=ep.job_id,
                    replica_id=replica.replica_id,
                    serves=spec.serves,
                    model=serde.blob_to_pb(spec.model),
                    settings_json=ep.settings_json,
                    max_batch=spec.max_batch,
                    max_delay_us=spec.max_delay_us,
                    memory_limit_bytes=spec.task_memory_limit_bytes,
                    time_limit_ms=spec.task_time_limit_s * 1000,
                    data_port=direct,
                    data_token=replica.data_token,
                )
            )
        )
        log.info("endpoint %s: replica %s on node %s", ep.job_id[:12], replica.replica_id[:12], link.node)
        return replica

    def tick(self) -> None:
        """One scaling and housekeeping pass (the loop runs it a few times a second)."""
        now = self.clock()
        for ep in self.endpoints.values():
            if ep.state == "running" and self.accounting.remaining(ep.job_id) == 0:
                ep.state = "spent"  # its budget is used up: its nodes go back to other work
            if ep.state == "spent":
                for replica in [r for r in ep.replicas.values() if not r.calls]:
                    self.release(replica, "the endpoint's budget is spent")
            if ep.state != "running":
                continue
            self.expire_warming(ep, now)
            step = placement.scale(ep, now)
            if step > 0:
                self.assign(ep)
                self.fill(ep)
            elif step < 0:
                self.drain_one(ep)
            for replica in [r for r in ep.replicas.values() if r.state == DRAINING and not r.calls]:
                self.release(replica, "scaled down")
        self.expire_answers(now)
        counts = {ASSIGNED: 0, READY: 0, DRAINING: 0}
        for ep in self.endpoints.values():
            for r in ep.replicas.values():
                counts[r.state] += 1
        self.replica_counts = counts  # replaced whole: a scrape on another thread reads one snapshot

    def drain_one(self, ep: Endpoint) -> None:
        """The least busy replica takes no new calls and is released once its calls are done
        (a warming one goes at once)."""
        live = [r for r in ep.replicas.values() if r.state != DRAINING]
        if not live:
            return
        victim = min(live, key=lambda r: (r.state == ASSIGNED and -1 or 0, len(r.calls)))
        if victim.state == ASSIGNED:
            self.release(victim, "scaled down")
        else:
            victim.state = DRAINING

    async def run(self, stop: asyncio.Event, interval_s: float = 0.25) -> None:
        """Scale, place and expire until stop is set."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must outlive a bug in one pass
                log.exception("serving tick failed")
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass

    def node_may_read(self, node: str, sha256: str) -> bool:
        """A node may fetch the model of an endpoint it holds a replica of."""
        link = self.links.get(node)
        return link is not None and any(r.endpoint.spec.model.sha256 == sha256 for r in link.replicas.values())

    def accepted(self, replica: Replica, batch: ServedBatch) -> None:
        """A receipt verified: pay the batch and let the checks draw from it (a check's
        rerun in it is marked first: neither paid nor drawn)."""
        self.receipted += 1
        if self.reruns:
            batch = self.reruns.mark(batch)
        replica.served += batch.answered
        try:
            # owed and pending: the node keeps word of it, in case this replica dies before writing it
            if self.accounting.record(batch) and self.counted_key:
                replica.link.send(serving_pb2.ServeDown(counted=[counted(self.counted_key, batch)]))
            self.checks.after_batch(batch, replica.endpoint.spec)
        except Exception:
            log.exception("accounting or checks failed on a batch of endpoint %s", batch.endpoint_id[:12])
