"""The node side of the router: open Serve streams, what goes down them and what comes up.

Replies resolve the calls waiting on them; receipts are checked (batches.py) before a batch
is paid; replica states make replicas ready or drop them. A node that breaks the protocol
(receipts for replicas it does not hold, unexpected messages) is counted and, past
MAX_VIOLATIONS, its stream is closed; a reply to a request it was never sent closes it at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from coordinator.services.serving import riders
from coordinator.services.serving.batches import BatchMismatch, counted_by_us, settle_batch
from coordinator.services.serving.errors import DeadlineExceeded
from coordinator.services.serving.hooks import Accounting, ServedBatch
from coordinator.services.serving.model import ASSIGNED, READY, Answered, Call, Endpoint, NodeLink, Replica, ReplicaGone
from tensorgrid.serving import trace
from tensorgrid.types import Domain
from tensorgrid.v1 import serving_pb2

log = logging.getLogger("tensorgrid.coordinator.serving")
RECEIPT_WAIT_S = 5.0  # an answer not receipted within this long is never paid
WARM_TIMEOUT_S = 180.0  # a replica not ready this long after its assignment is released
MISSED_DEADLINES = 3  # a replica missing this many deadlines in a row is released
MAX_VIOLATIONS = 16
MAX_NODE_REPLICAS = 64  # replicas one node may hold, whatever it asks
MAX_WARM = 64  # warm endpoints read from a node's hello
MAX_COUNTED = 4096  # counted batches read from a node's hello


def wall_ms_now() -> int:
    return int(time.time() * 1000)


class Links:
    """Serve streams by node address, and the handling of what their nodes send."""

    endpoints: dict[str, Endpoint]
    accounting: Accounting

    def __init__(
        self, domain: Domain, clock: Callable[[], float], wall_ms: Callable[[], int], counted_key: bytes = b""
    ) -> None:
        self.domain = domain
        self.counted_key = counted_key  # BatchCounted tags (batches.counted_key); empty: none taken
        self.clock = clock
        self.wall_ms = wall_ms
        self.links: dict[str, NodeLink] = {}
        self.mismatches = 0  # receipts refused (not paid)
        self.unpaid = 0  # answers whose receipt never came

    def fill(self, ep: Endpoint) -> None:
        raise NotImplementedError

    def assign_on(self, ep: Endpoint, link: NodeLink) -> Replica | None:
        """A replica of `ep` on `link` if the node may take it (the router's placement)."""
        raise NotImplementedError

    def accepted(self, replica: Replica, batch: ServedBatch) -> None:
        raise NotImplementedError

    def refused(self, replica: Replica, request_ids: list[int]) -> None:
        """A receipt naming these requests was refused (not paid); the router's hook."""

    # ---- streams ------------------------------------------------------------------------------
    def take_counted(self, link: NodeLink, batches: Sequence[serving_pb2.BatchCounted]) -> None:
        """Pay what a replica of this coordinator counted and perhaps died before writing (its tag
        proves it verified the receipt; the node cannot make one). Written once by task id, so a
        batch the other replica did write, or handed in twice, is paid once."""
        taken = 0
        for msg in batches:
            if not counted_by_us(self.counted_key, link.node, msg):
                self.violation(link, f"a counted batch {msg.task_id[:16]!r} no replica of this coordinator counted")
                continue
            if msg.endpoint_id in self.endpoints:
                self.accounting.record_counted(msg.endpoint_id, link.node, msg.task_id, msg.answered)
                taken += 1
        if taken:
            log.info("node %s handed in %d batches counted lately (paid once, if not already)", link.node, taken)

    def connect(
        self,
        node: str,
        device_kind: str,
        memory_bytes: int,
        max_replicas: int,
        warm: Sequence[str] = (),
        counted: Sequence[serving_pb2.BatchCounted] = (),
    ) -> NodeLink:
        """A node opened its Serve stream (a second stream of the same node replaces the first).
        warm: endpoints it still holds loaded (its coordinator replica died): one that has no
        ready replica here gets one on this node at once, even past min_replicas (scaling trims
        the extra), since it answers in about a second where a cold replica takes many."""
        old = self.links.get(node)
        if old is not None:
            self.disconnect(old)
        slots = max(0, min(max_replicas, MAX_NODE_REPLICAS))
        link = self.links[node] = NodeLink(node, device_kind, memory_bytes, slots, warm=frozenset(warm[:MAX_WARM]))
        self.take_counted(link, counted[:MAX_COUNTED])
        for job_id in link.warm:
            ep = self.endpoints.get(job_id)
            if ep is not None and ep.state == "running" and not ep.ready() and ep.live() < ep.spec.max_replicas + 1:
                self.assign_on(ep, link)
        for ep in list(self.endpoints.values()):
            self.fill(ep)
        return link

    def disconnect(self, link: NodeLink) -> None:
        """The stream ended: its replicas are gone, their calls fail over, others take their place."""
        link.close()
        if self.links.get(link.node) is link:
            del self.links[link.node]
        touched = {r.endpoint.job_id: r.endpoint for r in link.replicas.values()}
        for replica in list(link.replicas.values()):
            self.drop(replica)
        link.retired.clear()
        for ep in touched.values():
            self.fill(ep)

    def on_up(self, link: NodeLink, up: serving_pb2.ServeUp) -> None:
        """One message of a node: a replica's state, or replies and then receipts (many of each)."""
        which = up.WhichOneof("msg")
        if which == "state":
            self._on_state(link, up.state)
        elif which is not None or not (up.replies or up.receipts):
            self.violation(link, f"an unexpected {which or 'empty'} message")
        for reply in up.replies:
            if link.closed:
                return
            self._on_reply(link, reply)
        if up.receipts:
            # Checked after the callers just answered have run (they were woken first), so
            # a receipt's ~0.2 ms of hashing and ecrecover never sits between an answer and
            # its caller. Still before the stream's next message: loop callbacks run in order.
            asyncio.get_running_loop().call_soon(self._on_receipts, link, up.receipts)

    def _on_receipts(self, link: NodeLink, receipts: Sequence[serving_pb2.BatchReceipt], at: int = 0) -> None:
        """One receipt per pass of the event loop: the receipts of a replica on its data link come
        up together every 50 ms or so (dozens at 1 client), and checked in one go they would hold
        the calls answered meanwhile for milliseconds."""
        if link.closed or at >= len(receipts):
            return
        started = time.perf_counter_ns()
        self._on_receipt(link, receipts[at])
        trace.span("c.rcpt", len(receipts), started)
        if at + 1 < len(receipts):
            asyncio.get_running_loop().call_soon(self._on_receipts, link, receipts, at + 1)

    def violation(self, link: NodeLink, what: str, fatal: bool = False) -> None:
        """Count a protocol violation; past MAX_VIOLATIONS (or a fatal one) the stream is closed."""
        link.violations += 1
        log.warning("node %s broke the serving protocol: %s", link.node, what)
        if fatal or link.violations > MAX_VIOLATIONS:
            log.warning("node %s: too many protocol violations, its Serve stream is closed", link.node)
            self.disconnect(link)

    # ---- calls --------------------------------------------------------------------------------
    def send(
        self, replica: Replica, data: bytes, seed: int, deadline_ms: int, *, streaming: bool, ride: bool = False
    ) -> Call:
        """Send one request to the replica's node. ride (a check's rerun): hold it to go down
        in one message with the replica's next request, RIDE_WAIT_S at the latest (riders.py)."""
        link = replica.link
        rid = link.next_request_id
        link.next_request_id += 1
        loop = asyncio.get_running_loop()
        call = Call(rid, replica, data, seed, deadline_ms, loop.create_future(), asyncio.Queue() if streaming else None)
        link.calls[rid] = replica.calls[rid] = call
        call.timer = loop.call_later(max(0.0, (deadline_ms - self.wall_ms()) / 1000), self._expire, call)
        request = serving_pb2.ServeRequest(
            replica_id=replica.replica_id, request_id=rid, input=data, deadline_ms=deadline_ms, seed=seed
        )
        if ride:
            riders.hold(replica, request, loop)
        else:
            riders.down(replica, serving_pb2.ServeDown(requests=riders.with_riders(replica, request)))
        return call

    def data_lost(self, replica: Replica) -> None:
        """The replica's data link closed: what was sent on it (it may be lost with it) fails
        over, to another replica or to this one's Serve stream (the router's loop decides)."""
        replica.data = None
        gone = ReplicaGone(f"the data link of replica {replica.replica_id[:12]} on {replica.node} closed")
        held = {r.request_id for r in replica.riders}
        for call in [c for c in replica.calls.values() if c.request_id not in held]:
            self._fail(call, gone)

    def on_data_reply(self, replica: Replica, reply: serving_pb2.ServeReply) -> bool:
        """A reply that came up a replica's data link; False if it answers a request that link's
        replica was never sent (a worker answering for another replica, or a forgery)."""
        link = replica.link
        call = link.calls.get(reply.request_id)
        if call is not None and call.replica is not replica:
            return False
        if call is None:
            gone = link.gone.get(reply.request_id)
            if reply.request_id >= link.next_request_id or reply.request_id == 0:
                return False
            if gone is not None and gone[0].replica is not replica:
                return False
        self._on_reply(link, reply)
        return True

    def forget(self, call: Call) -> None:
        """The caller is done with `call`; still unanswered (the caller gave up): cancel it."""
        riders.unhold(call)
        if call.replica.link.calls.pop(call.request_id, None) is not None:
            call.replica.calls.pop(call.request_id, None)
            call.replica.link.gone[call.request_id] = (call, self.clock())
            call.replica.link.send(serving_pb2.ServeDown(cancel=serving_pb2.ServeCancel(request_id=call.request_id)))
        if call.timer is not None:
            call.timer.cancel()

    def _fail(self, call: Call, exc: Exception) -> None:
        riders.unhold(call)
        if call.replica.link.calls.pop(call.request_id, None) is not None:
            call.replica.link.gone[call.request_id] = (call, self.clock())
        call.replica.calls.pop(call.request_id, None)
        if call.timer is not None:
            call.timer.cancel()
        if not call.done.done():
            call.done.set_exception(exc)
        if call.chunks is not None:
            call.chunks.put_nowait(None)

    def _expire(self, call: Call) -> None:
        if call.replica.link.calls.get(call.request_id) is not call:
            return
        replica = call.replica
        replica.link.send(serving_pb2.ServeDown(cancel=serving_pb2.ServeCancel(request_id=call.request_id)))
        self._fail(call, DeadlineExceeded(f"no answer within the request's deadline (node {replica.node})"))
        replica.endpoint.stats.failed()
        self.strike(replica, "missed deadlines")

    def strike(self, replica: Replica, what: str) -> None:
        """A request the replica failed by its own fault (a missed deadline, its own error, an
        error another node's answer disproved): MISSED_DEADLINES in a row, with no answer
        between, release it and keep its node off the endpoint for a while (placement)."""
        replica.errors += 1
        replica.missed += 1
        if replica.missed >= MISSED_DEADLINES and replica.endpoint.replicas.get(replica.replica_id) is replica:
            self.release(replica, f"{what}: {replica.missed} requests in a row")
            replica.endpoint.failed_at[replica.node] = self.clock()
            self.fill(replica.endpoint)

    def _on_reply(self, link: NodeLink, reply: serving_pb2.ServeReply) -> None:
        rid = reply.request_id
        call = link.calls.get(rid)
        if call is None:
            if rid >= link.next_request_id or rid == 0:
                # no race explains it (ids only grow): a forgery, and the stream is closed
                self.violation(link, f"a reply to request {rid}, which it was never sent", fatal=True)
            elif reply.done:
                self._late(link, rid, reply)
            return
        if call.chunks is not None:
            call.tokens += len(reply.tokens)
            allowed = call.replica.endpoint.spec.max_new_tokens
            if call.tokens > allowed:  # no honest decoder goes past it: a flood, kept out of memory
                self.violation(link, f"{call.tokens} tokens streamed for request {rid} (at most {allowed})", fatal=True)
                return
            call.chunks.put_nowait(reply)
        if not reply.done:
            return
        del link.calls[rid]
        replica = call.replica
        replica.calls.pop(rid, None)
        if call.timer is not None:
            call.timer.cancel()
        ok = not reply.HasField("error")
        if ok:
            replica.missed = 0
        replica.answered[rid] = Answered(call.input, bytes(reply.output), ok, call.seed, reply.batch, self.clock())
        if not call.done.done():
            call.done.set_result(reply)

    def _late(self, link: NodeLink, rid: int, reply: serving_pb2.ServeReply) -> None:
        """An answer after its caller was gone: kept for its micro-batch's receipt (the node
        signed it with its batch-mates, who are paid), itself never paid nor checked."""
        gone = link.gone.pop(rid, None)
        if gone is None or reply.batch == 0:
            return  # long gone, or a request that ran in no micro-batch
        call = gone[0]
        output = b"" if reply.HasField("error") else bytes(reply.output)
        call.replica.answered[rid] = Answered(call.input, output, False, call.seed, reply.batch, self.clock(), True)

    def _on_receipt(self, link: NodeLink, msg: serving_pb2.BatchReceipt) -> None:
        replica = link.replicas.get(msg.replica_id) or link.retired.get(msg.replica_id)
        if replica is None:
            self.violation(link, f"a receipt for replica {msg.replica_id[:16]!r}, which it does not hold")
            return
        try:
            batch = settle_batch(self.domain, replica, msg)
        except BatchMismatch as e:
            self.mismatches += 1
            replica.errors += 1
            log.warning("refused a receipt of node %s (batch %d, not paid): %s", link.node, msg.batch, e)
            self.refused(replica, list(msg.request_ids))
            return
        self.accepted(replica, batch)

    def _on_state(self, link: NodeLink, state: serving_pb2.ReplicaState) -> None:
        replica = link.replicas.get(state.replica_id)
        if replica is None:
            return  # a replica released meanwhile
        ep = replica.endpoint
        if state.ready:
            if replica.state == ASSIGNED:
                replica.state = READY
                log.info("endpoint %s: replica %s on %s is ready", ep.job_id[:12], replica.replica_id[:12], link.node)
            return
        log.warning("endpoint %s: replica on %s failed: %s", ep.job_id[:12], link.node, state.error.message[:200])
        replica.errors += 1
        ep.failed_at[link.node] = self.clock()
        self.drop(replica)
        self.fill(ep)

    # ---- replicas -----------------------------------------------------------------------------
    def release(self, replica: Replica, reason: str) -> None:
        """Tell the node to drop the replica; its calls fail over."""
        replica.link.send(
            serving_pb2.ServeDown(release=serving_pb2.ReplicaRelease(replica_id=replica.replica_id, reason=reason))
        )
        self.drop(replica)

    def drop(self, replica: Replica) -> None:
        """Forget the replica (its receipts are still taken a while); its calls fail over."""
        replica.endpoint.replicas.pop(replica.replica_id, None)
        if replica.data is not None:
            data, replica.data = replica.data, None
            data.close()
        link = replica.link
        if link.replicas.pop(replica.replica_id, None) is not None and not link.closed:
            link.retired[replica.replica_id] = replica
        gone = ReplicaGone(f"replica {replica.replica_id[:12]} on {replica.node} went away")
        for call in list(replica.calls.values()):
            self._fail(call, gone)

    def expire_warming(self, ep: Endpoint, now: float) -> None:
        for replica in [r for r in ep.replicas.values() if r.state == ASSIGNED]:
            if now - replica.assigned_at > WARM_TIMEOUT_S:
                ep.failed_at[replica.node] = now
                self.release(replica, f"not ready within {WARM_TIMEOUT_S:.0f} s")

    def expire_answers(self, now: float) -> None:
        """Answers whose receipt is overdue are dropped (never paid); spent retired replicas go."""
        cutoff = now - RECEIPT_WAIT_S
        for link in self.links.values():
            for rid in [rid for rid, (_, at) in link.gone.items() if at < cutoff]:
                del link.gone[rid]
            for replica in (*link.replicas.values(), *link.retired.values()):
                answered = replica.answered
                while answered:
                    rid, first = next(iter(answered.items()))
                    if first.at >= cutoff:
                        break
                    del answered[rid]
                    self.unpaid += 1
            for replica_id in [k for k, r in link.retired.items() if not r.answered]:
                del link.retired[replica_id]
