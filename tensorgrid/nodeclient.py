"""A low-level async client of NodeService: the node protocol without any policy.

The node daemon's agent is built on it; benchmarks and tests use it to drive the real
API directly (simulated nodes, misbehaving nodes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from tensorgrid import serde
from tensorgrid.blobs import CHUNK_BYTES, file_sha256
from tensorgrid.crypto import Signer, registration_message, require_domain, sign_message, sign_receipt
from tensorgrid.failover import Targets, unavailable
from tensorgrid.rpc import SESSION_METADATA_KEY, SMALL_RESULT_BYTES, send_admitted
from tensorgrid.tls import ClientTls, open_channel
from tensorgrid.types import BlobRef, Capabilities, Domain, Lease, Receipt, TaskError
from tensorgrid.v1 import common_pb2, node_pb2, node_pb2_grpc, serving_pb2


@dataclasses.dataclass(frozen=True)
class Submitted:
    """The coordinator's answer to a result."""

    accepted: bool
    reason: str  # why not, when refused
    reveal_steps: list[int]  # training checkpoints its audit asks for (usually none)
    leases: list[Lease]  # the next tasks asked for with it
    # No leases: how long LeaseTasks would have asked to wait; 0 when leasing was not tried
    # (refused result, or a node that may not lease: LeaseTasks says why).
    retry_after_ms: int


class NodeClient:
    """One node's connection: register once, then lease, fetch, submit, report, heartbeat.

    `target` may name several replicas of one coordinator (`a:7070,b:7070`, tensorgrid.failover):
    a call that fails with UNAVAILABLE moves the client to the next one, keeping its session
    token (the replicas share the database that holds it); the caller retries as it would
    against one coordinator."""

    def __init__(
        self,
        target: str,
        signer: Signer,
        timeout: float = 30.0,
        *,
        tls: ClientTls | None = None,
        expected_domain: Domain | None = None,
        own_connection: bool = False,
    ) -> None:
        """tls: how the channel is secured (tensorgrid.tls); expected_domain: the EIP-712 domain of
        the node's deployment file, if it has one: registration refuses to sign under any other;
        own_connection: a TCP connection not shared with other clients in this process (simulated fleets)."""
        self.signer = signer
        self.timeout = timeout
        self.expected_domain = expected_domain
        self.tls, self.own_connection = tls, own_connection
        self.targets = Targets(target)  # one address, or several replicas of one coordinator
        self.channel = open_channel(self.targets.current, tls, aio=True, own_connection=own_connection)
        self.stub = node_pb2_grpc.NodeServiceStub(self.channel)
        self._channels: dict[str, Any] = {self.targets.current: self.channel}  # one per replica dialled
        self.token = ""
        self.domain: Domain | None = None
        self.heartbeat_s = 5.0  # while holding leases: the coordinator's Register interval
        self.idle_heartbeat_s = 5.0  # while holding none: what its last heartbeat answer said

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((SESSION_METADATA_KEY, self.token),)

    @property
    def target(self) -> str:
        """The replica calls go to now."""
        return self.targets.current

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    def failed(self, e: BaseException, generation: int) -> bool:
        """A call made under `generation` failed with `e`: on UNAVAILABLE move to the next replica
        (once per failure of the current one); True when it moved."""
        if not (unavailable(e) and self.targets.move_on(generation)):
            return False
        target = self.targets.current  # calls still running on the old channel finish or fail there
        if target not in self._channels:
            self._channels[target] = open_channel(target, self.tls, aio=True, own_connection=self.own_connection)
        self.channel = self._channels[target]
        self.stub = node_pb2_grpc.NodeServiceStub(self.channel)
        return True

    async def _call(self, name: str, request: Any, **kwargs: Any) -> Any:
        """stub.<name>(request) on the current replica, moving on when it is unavailable."""
        return await self._on_replica(lambda stub: getattr(stub, name)(request, **kwargs))

    async def _send(self, name: str, messages: AsyncIterator[Any], **kwargs: Any) -> Any:
        """The client stream stub.<name> on the current replica, its messages sent once the
        coordinator admits the call (tensorgrid.rpc.send_admitted), moving on as _call does."""
        return await self._on_replica(lambda stub: send_admitted(getattr(stub, name)(**kwargs), messages))

    async def _on_replica(self, call: Callable[[Any], Awaitable[Any]]) -> Any:
        """call(stub) on the current replica; a failure that says the replica is gone moves the
        client to the next one (self.failed) before it is raised."""
        generation = self.targets.generation
        try:
            return await call(self.stub)
        except grpc.aio.AioRpcError as e:
            self.failed(e, generation)
            raise

    async def register(self, caps: Capabilities, version: str = "0.1.0") -> None:
        ch = await self._call(
            "GetChallenge", node_pb2.ChallengeRequest(address=self.signer.address), timeout=self.timeout
        )
        domain = serde.domain_from_pb(ch.domain)
        if self.expected_domain is not None:
            require_domain(self.expected_domain, domain)
        sig = sign_message(self.signer, registration_message(self.signer.address, ch.nonce, domain))
        resp = await self._call(
            "Register",
            node_pb2.RegisterRequest(
                address=self.signer.address,
                nonce=ch.nonce,
                signature=sig,
                capabilities=serde.caps_to_pb(caps),
                version=version,
            ),
            timeout=self.timeout,
        )
        session_domain = serde.domain_from_pb(resp.domain)
        if self.expected_domain is not None:
            require_domain(self.expected_domain, session_domain)
        self.token = resp.session_token
        self.domain = session_domain
        self.heartbeat_s = self.idle_heartbeat_s = max(0.2, resp.heartbeat_interval_ms / 1000)

    async def lease(self, max_tasks: int = 1, wait_ms: int = 0) -> tuple[list[Lease], int]:
        """Ask for up to max_tasks; with wait_ms the coordinator holds the call until work appears."""
        resp = await self._call(
            "LeaseTasks",
            node_pb2.LeaseRequest(max_tasks=max_tasks, wait_ms=wait_ms),
            metadata=self.metadata,
            timeout=self.timeout + wait_ms / 1000,
        )
        return [serde.lease_from_pb(x) for x in resp.leases], resp.retry_after_ms

    async def heartbeat(self, active: Iterable[tuple[str, int]], draining: bool = False) -> list[tuple[str, int]]:
        resp = await self._call(
            "Heartbeat",
            node_pb2.HeartbeatRequest(
                active=[node_pb2.LeaseKey(task_id=t, attempt=a) for t, a in active], draining=draining
            ),
            metadata=self.metadata,
            timeout=self.timeout,
        )
        if resp.heartbeat_interval_ms:  # 0: a coordinator that does not pace idle nodes
            self.idle_heartbeat_s = max(self.heartbeat_s, resp.heartbeat_interval_ms / 1000)
        return [(k.task_id, k.attempt) for k in resp.revoked]

    def fetch(self, ref: BlobRef, offset: int = 0) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            generation = self.targets.generation
            call = self.stub.FetchBlob(
                common_pb2.FetchBlobRequest(sha256=ref.sha256, offset=offset), metadata=self.metadata
            )
            try:
                async for chunk in call:
                    yield chunk.data
            except grpc.aio.AioRpcError as e:
                self.failed(e, generation)
                raise

        return chunks()

    def serve(self, up: AsyncIterator[serving_pb2.ServeUp]) -> Any:
        """Open the Serve stream (real-time serving, docs/SERVING.md): `up` is what the node sends
        (ServeHello first); iterate the returned call for the coordinator's ServeDown messages.
        No deadline: the stream lives as long as the session."""
        return self.stub.Serve(up, metadata=self.metadata)

    def sign_batch(self, receipt: Receipt) -> Receipt:
        """Sign a serving micro-batch's receipt (tensorgrid.serving.batch_receipt) under the session's domain."""
        assert self.domain is not None, "register first"
        return sign_receipt(self.signer, self.domain, receipt)

    def sign(self, lease: Lease, output: BlobRef, commitment: str = "") -> Receipt:
        """Sign the receipt of a result; commitment (64 hex) e.g. a training task's checkpoint chain."""
        assert self.domain is not None, "register first"
        receipt = Receipt(
            job_id=lease.job_id,
            task_id=lease.task_id,
            attempt=lease.attempt,
            input_hash=lease.input.sha256,
            output_hash=output.sha256,
        )
        if commitment:
            receipt = dataclasses.replace(receipt, commitment=commitment.removeprefix("0x"))
        return sign_receipt(self.signer, self.domain, receipt)

    async def submit(self, receipt: Receipt, output_size: int, data: bytes | Path) -> tuple[bool, str]:
        """Send a signed result; data is the output's bytes or a file to stream. Returns (accepted, reason)."""
        accepted, reason, _ = await self.submit_result(receipt, output_size, data)
        return accepted, reason

    async def submit_result(
        self, receipt: Receipt, output_size: int, data: bytes | Path
    ) -> tuple[bool, str, list[int]]:
        """submit(), also returning the checkpoint steps to reveal (a training result drawn for an audit)."""
        done = await self.submit_and_lease(receipt, output_size, data)
        return done.accepted, done.reason, done.reveal_steps

    async def submit_and_lease(
        self, receipt: Receipt, output_size: int, data: bytes | Path, want_tasks: int = 0
    ) -> Submitted:
        """Send a signed result and ask for up to want_tasks next leases in the same call
        (piggybacked leasing: granted only with an accepted result, never waited for)."""
        header = node_pb2.ResultHeader(
            receipt=serde.receipt_to_pb(receipt), output_size=output_size, want_tasks=want_tasks
        )
        if output_size <= SMALL_RESULT_BYTES:  # one message, no stream
            body = data if isinstance(data, bytes) else await asyncio.to_thread(Path(data).read_bytes)
            resp = await self._call(
                "SubmitSmallResult",
                node_pb2.SmallResult(header=header, output=body),
                metadata=self.metadata,
                timeout=self.timeout,
            )
        else:
            chunks = _stream(node_pb2.ResultChunk, node_pb2.ResultChunk(header=header), data)
            resp = await self._send("SubmitResult", chunks, metadata=self.metadata, timeout=max(self.timeout, 600))
        return Submitted(
            accepted=resp.accepted,
            reason=resp.reason,
            reveal_steps=list(resp.reveal_steps),
            leases=[serde.lease_from_pb(x) for x in resp.leases],
            retry_after_ms=resp.retry_after_ms,
        )

    async def reveal(self, task_id: str, attempt: int, step: int, data: bytes | Path) -> tuple[bool, str]:
        """Upload the training checkpoint at `step` of a submitted result, as its audit asked.

        data is the checkpoint's bytes or its file (hashed on a thread). Returns (accepted, reason)."""
        if isinstance(data, bytes):
            ref = BlobRef(hashlib.sha256(data).hexdigest(), len(data))
        else:
            ref = await asyncio.to_thread(file_sha256, data)
        header = node_pb2.RevealHeader(task_id=task_id, attempt=attempt, step=step, size=ref.size, sha256=ref.sha256)
        chunks = _stream(node_pb2.RevealChunk, node_pb2.RevealChunk(header=header), data)
        resp = await self._send("RevealCheckpoint", chunks, metadata=self.metadata, timeout=max(self.timeout, 600))
        return resp.accepted, resp.reason

    async def report(self, task_id: str, attempt: int, error: TaskError, timeout: float | None = None) -> bool:
        ack = await self._call(
            "ReportFailure",
            node_pb2.FailureReport(task_id=task_id, attempt=attempt, error=serde.error_to_pb(error)),
            metadata=self.metadata,
            timeout=timeout or self.timeout,
        )
        return bool(ack.reissued)


M = TypeVar("M")


async def _stream(kind: Any, header: M, data: bytes | Path) -> AsyncIterator[M]:
    """A client stream: the header message, then data in chunks as kind(data=...)."""
    yield header
    if isinstance(data, bytes):
        for i in range(0, len(data), CHUNK_BYTES):
            yield kind(data=data[i : i + CHUNK_BYTES])
    else:
        with open(data, "rb") as f:
            while piece := f.read(CHUNK_BYTES):
                yield kind(data=piece)
