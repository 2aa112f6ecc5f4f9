"""What the router holds in memory: node links (open Serve streams), endpoints, replicas, calls.

Nothing here touches the database or the network: the router and the Serve stream handler
move these objects around on the event loop, one thread, no locks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from coordinator.services.serving.stats import EndpointStats
from tensorgrid.spec import EndpointSpec
from tensorgrid.v1 import serving_pb2

ASSIGNED, READY, DRAINING = "assigned", "ready", "draining"


class ReplicaGone(Exception):
    """The replica a call was sent to went away (its stream broke, or it was released)."""


@dataclass
class Call:
    """One request sent to one replica, waiting for its answer."""

    request_id: int
    replica: Replica
    input: bytes
    seed: int
    deadline_ms: int
    # inference: the final reply; generation: every reply, in order (None ends the stream)
    done: asyncio.Future[serving_pb2.ServeReply]
    chunks: asyncio.Queue[serving_pb2.ServeReply | None] | None = None
    started: float = field(default_factory=time.perf_counter)
    timer: asyncio.TimerHandle | None = None  # fails the call at its deadline
    tokens: int = 0  # generation: the tokens its replica streamed so far


@dataclass
class Answered:
    """A request the replica answered, kept until its batch receipt arrives (or it expires)."""

    input: bytes
    output: bytes
    ok: bool
    seed: int
    batch: int
    at: float  # monotonic time of the answer
    late: bool = False  # came after its caller was gone: in its batch's receipt, never paid


@dataclass
class NodeLink:
    """One node's open Serve stream: its replicas, its calls, the messages waiting to go down."""

    node: str
    device_kind: str
    memory_bytes: int
    max_replicas: int
    outbox: asyncio.Queue[serving_pb2.ServeDown | None] = field(default_factory=asyncio.Queue)
    replicas: dict[str, Replica] = field(default_factory=dict)
    retired: dict[str, Replica] = field(default_factory=dict)  # released, their receipts still due
    calls: dict[int, Call] = field(default_factory=dict)
    # calls whose caller was gone before their answer (deadline, cancel, a deleted endpoint),
    # with when: a late answer still belongs in its micro-batch's receipt (links._on_reply)
    gone: dict[int, tuple[Call, float]] = field(default_factory=dict)
    next_request_id: int = 1
    violations: int = 0  # protocol violations seen (replies for ids never sent, foreign replicas)
    closed: bool = False
    # endpoints the node says it holds loaded from a broken stream (another coordinator
    # replica's): placed here first, ready at once. Only a preference: a lie costs it nothing
    # it could not get by connecting first, and gains it nothing more.
    warm: frozenset[str] = frozenset()

    def send(self, msg: serving_pb2.ServeDown) -> None:
        if not self.closed:
            self.outbox.put_nowait(msg)

    def close(self) -> None:
        """End the stream: the handler's writer sees None and returns."""
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)

    @property
    def free_slots(self) -> int:
        return self.max_replicas - len(self.replicas)


class DataPath(Protocol):
    """A replica's authenticated data link to its worker (services.serving.datalink)."""

    def send(self, msg: serving_pb2.ServeDown) -> None: ...

    def close(self) -> None: ...


@dataclass
class Replica:
    replica_id: str
    endpoint: Endpoint
    link: NodeLink
    state: str = ASSIGNED
    assigned_at: float = 0.0
    calls: dict[int, Call] = field(default_factory=dict)  # request id → call in flight
    answered: dict[int, Answered] = field(default_factory=dict)  # waiting for their receipt
    served: int = 0  # requests paid (receipt verified)
    errors: int = 0
    missed: int = 0  # deadlines missed in a row
    # checks' reruns held to ride down with this replica's next request (links.send): in
    # `calls` already (so every way a call fails covers them), not yet on the stream
    riders: list[serving_pb2.ServeRequest] = field(default_factory=list)
    rider_timer: asyncio.TimerHandle | None = None  # sends the riders alone if no request comes
    data_token: bytes = b""  # proves the node's data link for this replica (ReplicaAssign.data_token)
    data: DataPath | None = None  # the data link its requests go down while it is up (datalink.py)

    @property
    def node(self) -> str:
        return self.link.node

    @property
    def in_flight(self) -> int:
        return len(self.calls)

    @property
    def busy(self) -> int:
        """Calls on their way to the node or in it: in flight, less the riders still held."""
        return len(self.calls) - len(self.riders)


@dataclass
class Endpoint:
    job_id: str
    submitter: str
    spec: EndpointSpec
    created_ms: int
    state: str = "running"  # running, deleted, spent
    replicas: dict[str, Replica] = field(default_factory=dict)
    stats: EndpointStats = field(default_factory=EndpointStats)
    barred: set[str] = field(default_factory=set)  # nodes caught answering wrong
    failed_at: dict[str, float] = field(default_factory=dict)  # node → when a replica of it failed
    waiting: int = 0  # calls between replicas (failing over) right now
    high_since: float | None = None  # load above max_batch per replica since (monotonic)
    low_since: float | None = None  # load low since
    refused_recently: bool = False  # a call was refused as saturated since the last scaling tick
    settings_json: bytes = b""  # ReplicaAssign.settings_json (spec.replica_settings())
    last_p50: float = 0.0  # the retry hint's base, refreshed now and then
    # A paid endpoint answers only once its escrow's lock is confirmed on chain (no free answers:
    # before it, the submitter could still close the escrow); a free one at once.
    secured: bool = True

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state == READY]

    def warming(self) -> int:
        return sum(1 for r in self.replicas.values() if r.state == ASSIGNED)

    def live(self) -> int:
        """Replicas that count toward min/max: ready or warming (not draining)."""
        return sum(1 for r in self.replicas.values() if r.state != DRAINING)

    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas.values())

    def held(self) -> int:
        """Requests admitted whose pay is not counted yet: in flight, failing over, or answered
        and waiting for their batch's receipt (an upper bound: some of those will not be paid)."""
        return self.waiting + sum(len(r.calls) + len(r.answered) for r in self.replicas.values())
