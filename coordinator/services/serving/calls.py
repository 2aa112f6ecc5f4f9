"""The router's calls: a request admitted, routed to a replica, failed over, answered.

A call goes to the ready replica with the fewest requests in flight below max_queue. Every
replica full: `Saturated` (RESOURCE_EXHAUSTED with a retry hint); none ready: `Unavailable`.
A call whose replica goes away, or fails it by its own fault, is sent to another one while its
deadline allows; an error blaming the request is asked of one other node's replica first
(infer). A generation's streamed tokens must be those of its answer (_check_stream).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from coordinator.errors import Conflict
from coordinator.services.serving.errors import (
    DeadlineExceeded,
    RequestFailed,
    Saturated,
    ServingError,
    StreamMismatch,
    Unavailable,
)
from coordinator.services.serving.hooks import Accounting
from coordinator.services.serving.links import Links
from coordinator.services.serving.model import READY, Endpoint, Replica, ReplicaGone
from coordinator.services.serving.rerun import stream_fault
from tensorgrid import serde
from tensorgrid.serving import check_tensor_bytes, trace
from tensorgrid.types import ErrorKind

FAILOVER_POLL_S = 0.02  # a call between replicas looks for a ready one this often
MIN_RETRY_MS = 5  # a call with less time left than this is not sent again
MAX_TRIES = 3  # replicas one request is run on at most after errors (broken streams aside)
# errors that blame the request, not the replica (another node's replica is asked once)
REQUEST_ERRORS = frozenset({ErrorKind.INVALID_INPUT, ErrorKind.UNSAFE_INPUT, ErrorKind.PROGRAM_ERROR})


class Calls(Links):
    """Routing and failing over the calls of endpoints (a part of the Router, which holds them)."""

    accounting: Accounting  # the Router's: what an endpoint's budget still pays for (_admit)

    def _admit(self, ep: Endpoint, data: bytes) -> None:
        left = self.accounting.remaining(ep.job_id)
        if ep.state == "running" and left == 0:
            ep.state = "spent"
        if ep.state != "running":
            raise Conflict(f"endpoint {ep.job_id} is {ep.state}" + (": budget spent" if ep.state == "spent" else ""))
        if not ep.secured:
            raise Unavailable(
                f"endpoint {ep.job_id} answers once its escrow's lock is confirmed on chain: retry shortly", 1000
            )
        if left is not None and ep.held() >= left:  # no answer the budget could not pay for
            raise Saturated(
                f"endpoint {ep.job_id} has budget for {left} more requests, all held by requests in flight: "
                "retry shortly",
                self._retry_hint(ep),
            )
        try:
            check_tensor_bytes(data, ep.spec.max_request_bytes)
        except Exception:
            ep.stats.failed()
            raise

    def pick(self, ep: Endpoint, exclude_node: str = "") -> Replica:
        """The ready replica with the fewest calls in flight under max_queue; else raise. Of
        equally busy ones, one holding a check's rerun (links.send ride), which goes down with
        the call: one message and one micro-batch for both."""
        best: Replica | None = None
        best_n = 0
        cap = ep.spec.max_queue
        ready = False
        for r in ep.replicas.values():
            if r.state != READY or r.link.node == exclude_node:
                continue
            ready = True
            n = r.busy
            if n < cap and (best is None or n < best_n or (n == best_n and r.riders and not best.riders)):
                best, best_n = r, n
        if best is not None:
            return best
        if ep.state != "running":
            raise Conflict(f"endpoint {ep.job_id} is {ep.state}")
        if ready:
            ep.refused_recently = True
            raise Saturated(
                f"every ready replica of endpoint {ep.job_id} holds {cap} requests: retry shortly",
                self._retry_hint(ep),
            )
        warming = ep.warming()
        if warming:
            raise Unavailable(
                f"no replica of endpoint {ep.job_id} is ready yet ({warming} warming): retry shortly", 500
            )
        # UNAVAILABLE moves a failover client (tensorgrid.failover) to the next coordinator
        # replica at once: the one whose nodes serve this endpoint, if another does (service.py)
        raise Unavailable(
            f"no replica of endpoint {ep.job_id} is ready on this coordinator replica (no node serves it here): "
            "retry shortly, or through another replica",
            2000,
        )

    @staticmethod
    def _retry_hint(ep: Endpoint) -> int:
        """About one batch's time: the last minute's median latency, within [5, 1000] ms."""
        p50, _ = ep.stats.percentiles() if ep.stats.requests % 64 == 0 else (ep.last_p50, 0.0)
        ep.last_p50 = p50
        return int(min(1000.0, max(5.0, p50)))

    async def infer(self, ep: Endpoint, data: bytes, timeout_ms: int = 0, seed: int = 0) -> tuple[bytes, str, int]:
        """The output of one request, the node that answered and the replicas tried.

        A replica's error of its own (released, crashed, over its limits, its deadline) sends the
        request to another replica, as a broken stream does, and is a strike against it. An error
        blaming the request (invalid input, the program raised) is asked of one more node's
        replica when there is one ready: a lying or broken replica cannot fail the endpoint's
        callers, and a strike is counted against it when the other answers. MAX_TRIES bounds the
        runs one request can cost."""
        self._admit(ep, data)
        deadline = self.wall_ms() + (timeout_ms or ep.spec.request_timeout_ms)
        started = time.perf_counter()
        attempts, avoid = 0, ""
        doubted: Replica | None = None  # the replica whose error another node's is asked about
        while True:
            replica = await self._next_replica(ep, deadline, attempts, avoid)
            attempts += 1
            call = self.send(replica, data, seed, deadline, streaming=False)
            try:
                reply = await call.done
                trace.stamp("c.woken", f"{replica.replica_id[:8]}:{call.request_id}")
            except ReplicaGone:
                continue  # another replica, if the deadline allows (_next_replica decides)
            finally:
                self.forget(call)
            if not reply.HasField("error"):
                if doubted is not None:
                    self.strike(doubted, "failed requests another node answered")
                ep.stats.answered((time.perf_counter() - started) * 1000)
                return bytes(reply.output), replica.node, attempts
            error = serde.error_from_pb(reply.error)
            avoid = replica.node
            if error.kind not in REQUEST_ERRORS:
                self.strike(replica, f"its own errors ({error.kind.value})")
                if attempts < MAX_TRIES:
                    continue
            elif doubted is None and attempts < MAX_TRIES and self._ready_elsewhere(ep, replica.node):
                doubted = replica
                continue
            ep.stats.failed()
            raise RequestFailed(f"the model failed on this request: {error.message}")

    @staticmethod
    def _ready_elsewhere(ep: Endpoint, node: str) -> bool:
        return any(r.state == READY and r.link.node != node for r in ep.replicas.values())

    async def generate(
        self, ep: Endpoint, data: bytes, timeout_ms: int = 0, seed: int = 0
    ) -> AsyncIterator[tuple[list[int], bool, bytes, str]]:
        """(new tokens, done, output on the last, node) as the replica decodes; after a failover
        the new replica's first tokens (the same: same seed) are skipped, never sent twice."""
        self._admit(ep, data)
        deadline = self.wall_ms() + (timeout_ms or ep.spec.request_timeout_ms)
        started = time.perf_counter()
        given: list[int] = []  # what the caller was sent, from every replica tried
        attempts, avoid = 0, ""
        while True:
            replica = await self._next_replica(ep, deadline, attempts, avoid)
            attempts += 1
            call = self.send(replica, data, seed, deadline, streaming=True)
            streamed: list[int] = []  # what this replica streamed
            try:
                while True:
                    reply = await call.chunks.get()  # type: ignore[union-attr]
                    if reply is None:
                        await call.done  # raises why the stream ended (ReplicaGone, a deadline)
                        continue
                    if reply.HasField("error"):
                        error = serde.error_from_pb(reply.error)
                        if error.kind not in REQUEST_ERRORS:  # its own trouble: another replica, as infer
                            self.strike(replica, f"its own errors ({error.kind.value})")
                            if attempts < MAX_TRIES:
                                avoid = replica.node
                                raise ReplicaGone(error.message)
                        ep.stats.failed()
                        raise RequestFailed(f"the model failed on this request: {error.message}")
                    tokens = list(reply.tokens)
                    new = tokens[max(0, len(given) - len(streamed)) :]
                    streamed += tokens
                    given += new
                    if reply.done:
                        self._check_stream(ep, replica, bytes(reply.output), streamed, given)
                    if new or reply.done:
                        yield new, reply.done, bytes(reply.output) if reply.done else b"", replica.node
                    if reply.done:
                        ep.stats.answered((time.perf_counter() - started) * 1000)
                        return
            except ReplicaGone:
                continue
            finally:
                self.forget(call)

    def _check_stream(
        self, ep: Endpoint, replica: Replica, output: bytes, streamed: list[int], given: list[int]
    ) -> None:
        """A generation answer must hold the tokens streamed (rerun.stream_fault): else the request
        fails, and a replica that streamed what its own answer does not hold broke the protocol."""
        fault = stream_fault(output, streamed, given)
        if fault is None:
            return
        ep.stats.failed()
        if fault == "replica":
            self.violation(replica.link, "streamed tokens its answer does not hold", fatal=True)
        raise StreamMismatch("the tokens streamed differ from the replica's final answer: discard them and call again")

    async def _next_replica(self, ep: Endpoint, deadline: int, attempts: int, avoid: str = "") -> Replica:
        """The replica to try next: refused at once on the first attempt; on a failover the call
        waits for a replica (placement replaces the lost one) while its deadline allows, on
        another node than `avoid` (the one that just failed it) when one is ready."""
        if attempts == 0:
            try:
                return self.pick(ep)
            except ServingError as e:
                ep.stats.failed(refused=isinstance(e, Saturated))
                raise
        ep.waiting += 1
        try:
            while self.wall_ms() < deadline - MIN_RETRY_MS:
                try:
                    return self.pick(ep, avoid if avoid and self._ready_elsewhere(ep, avoid) else "")
                except (Saturated, Unavailable):
                    await asyncio.sleep(FAILOVER_POLL_S)
        finally:
            ep.waiting -= 1
        ep.stats.failed()
        raise DeadlineExceeded(
            f"the request's replica went away and no other answered within its deadline ({attempts} tried)"
        )
