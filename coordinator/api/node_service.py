"""NodeService: how volunteer nodes register, take work and hand back signed results."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

import grpc

from coordinator.api.auth import (
    SessionCache,
    check_challenge,
    current_node,
    current_session,
    make_challenge,
    token_hash,
)
from coordinator.api.blobs import stream_blob
from coordinator.api.grid import Grid
from coordinator.api.serving import ServingApi
from coordinator.api.status import abort, request_address, unary
from coordinator.errors import NotFound, PermissionDenied, Rejected
from coordinator.services.acceptance import Output
from coordinator.services.runtime import now_ms
from tensorgrid import serde
from tensorgrid.crypto import recover_message_signer, registration_message
from tensorgrid.errors import BlobError, SignatureError
from tensorgrid.rpc import SMALL_RESULT_BYTES
from tensorgrid.types import BlobRef
from tensorgrid.v1 import common_pb2, node_pb2, node_pb2_grpc, serving_pb2

log = logging.getLogger("tensorgrid.coordinator")


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, app: Grid, sessions: SessionCache) -> None:
        self.app = app
        self.sessions = sessions
        self.serving = ServingApi(app)

    @unary
    async def GetChallenge(
        self, request: node_pb2.ChallengeRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.Challenge:
        address = request_address(request.address)
        now = now_ms()
        nonce = make_challenge(self.app.challenge_secret, address, now)
        return node_pb2.Challenge(nonce=nonce, expires_at_ms=now + 120_000, domain=serde.domain_to_pb(self.app.domain))

    @unary
    async def Register(
        self, request: node_pb2.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.RegisterResponse:
        app = self.app
        address = request_address(request.address)
        now = now_ms()
        check_challenge(app.challenge_secret, address, request.nonce, now)
        try:
            signer = recover_message_signer(registration_message(address, request.nonce, app.domain), request.signature)
        except SignatureError as e:
            raise PermissionDenied(f"bad registration signature: {e}") from None
        if signer != address:
            raise PermissionDenied(f"registration signed by {signer}, not {address}")
        if app.chain is not None:
            await app.runtime.work(app.chain.check_node, address)
        caps = serde.caps_from_pb(request.capabilities)
        if caps.device_kind not in ("cpu", "cuda"):
            raise Rejected(f"device_kind must be 'cpu' or 'cuda', got {caps.device_kind!r}")
        token = secrets.token_urlsafe(32)
        dropped = await app.runtime.db(
            app.store.nodes.register_node,
            address,
            caps,
            token_hash(token),
            now,
            app.config.session_ttl_ms,
            request.nonce.hex(),
            app.config.sessions.max_per_address,
        )
        self.sessions.discard(dropped)
        self.sessions.add(token, address, now + app.config.session_ttl_ms)
        log.info("node %s registered (%s, %d MiB)", address, caps.device_kind, caps.memory_bytes >> 20)
        return node_pb2.RegisterResponse(
            session_token=token,
            heartbeat_interval_ms=app.config.heartbeat_interval_ms,
            domain=serde.domain_to_pb(app.domain),
        )

    @unary
    async def Heartbeat(
        self, request: node_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.HeartbeatResponse:
        cap = self.app.config.peers.heartbeat_leases
        if len(request.active) > cap:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a heartbeat may list at most {cap} active leases, this one lists {len(request.active)}",
            )
        active = [(k.task_id, k.attempt) for k in request.active]
        node = current_node.get()
        revoked = await self.app.scheduler.heartbeat(node, active, request.draining, current_session.get(""))
        return node_pb2.HeartbeatResponse(
            revoked=[node_pb2.LeaseKey(task_id=t, attempt=a) for t, a in revoked],
            server_time_ms=now_ms(),
            heartbeat_interval_ms=self.app.scheduler.pacing.beat(node, bool(active) or request.draining),
        )

    @unary
    async def LeaseTasks(
        self, request: node_pb2.LeaseRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.LeaseResponse:
        await self._check_stake(current_node.get())
        leases, retry = await self.app.scheduler.lease(current_node.get(), request.max_tasks, request.wait_ms)
        return node_pb2.LeaseResponse(leases=[serde.lease_to_pb(x) for x in leases], retry_after_ms=retry)

    async def _check_stake(self, node: str) -> None:
        """On a chain, a node whose stake is gone loses its sessions (checked at most every 30 s)."""
        chain = self.app.chain
        if chain is None or chain.recently_active(node):
            return
        try:
            await self.app.runtime.work(chain.check_node, node)
        except PermissionDenied:
            await self.app.runtime.db(self.app.store.sessions.revoke_node, node)
            self.sessions.revoke(node)
            log.warning("node %s has no active stake any more: its sessions are revoked", node)
            raise

    async def FetchBlob(
        self, request: common_pb2.FetchBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.BlobChunk]:
        """Only the blobs of tasks the node holds a lease on (model, input, blobs its settings name)."""
        try:
            node, sha256 = current_node.get(), request.sha256.lower()
            if not self.app.serving.router.node_may_read(node, sha256):  # an endpoint's model it serves
                await self.app.access.check_node_read(node, sha256)
        except Exception as e:
            await abort(context, e)
        async for chunk in stream_blob(self.app.blobs, request, context):
            yield chunk

    @unary
    async def ReportFailure(
        self, request: node_pb2.FailureReport, context: grpc.aio.ServicerContext
    ) -> node_pb2.FailureAck:
        node = current_node.get()
        error = serde.error_from_pb(request.error)
        task, reissued = await self.app.scheduler.fail(node, request.task_id, request.attempt, error)
        log.info(
            "node %s failed task %s/%d: %s: %s",
            node,
            task.index,
            request.attempt,
            error.kind.value,
            error.message[:200],
        )
        return node_pb2.FailureAck(reissued=reissued)

    @unary
    async def SubmitResult(
        self, request_iterator: AsyncIterator[node_pb2.ResultChunk], context: grpc.aio.ServicerContext
    ) -> node_pb2.SubmitResultResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise Rejected("SubmitResult must start with a header carrying the receipt")

        async def data() -> AsyncIterator[bytes]:
            async for chunk in request_iterator:
                if chunk.WhichOneof("part") != "data":
                    raise Rejected("a second header in one SubmitResult")
                yield chunk.data

        return await self._submit(first.header, data())

    @unary
    async def SubmitSmallResult(
        self, request: node_pb2.SmallResult, context: grpc.aio.ServicerContext
    ) -> node_pb2.SubmitResultResponse:
        if request.header.output_size > SMALL_RESULT_BYTES:
            raise Rejected(f"outputs over {SMALL_RESULT_BYTES} bytes go through SubmitResult")
        return await self._submit(request.header, request.output)

    async def _submit(self, header: node_pb2.ResultHeader, data: Output) -> node_pb2.SubmitResultResponse:
        receipt = serde.receipt_from_pb(header.receipt)
        try:
            accepted = await self.app.acceptance.submit(
                current_node.get(), receipt, header.output_size, data, header.want_tasks
            )
        except (Rejected, BlobError, NotFound) as e:
            return node_pb2.SubmitResultResponse(accepted=False, reason=str(e))
        leases, retry = accepted.leases if accepted.leases is not None else ([], 0)
        return node_pb2.SubmitResultResponse(
            accepted=True,
            reveal_steps=accepted.reveal_steps,
            leases=[serde.lease_to_pb(x) for x in leases],
            retry_after_ms=retry,
        )

    @unary
    async def RevealCheckpoint(
        self, request_iterator: AsyncIterator[node_pb2.RevealChunk], context: grpc.aio.ServicerContext
    ) -> node_pb2.RevealResponse:
        """A training checkpoint an audit asked for; refused ones say why (and are not retried)."""
        node = current_node.get()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise Rejected("RevealCheckpoint must start with a header naming the task, attempt and step")
        h = first.header

        async def data() -> AsyncIterator[bytes]:
            async for chunk in request_iterator:
                if chunk.WhichOneof("part") != "data":
                    raise Rejected("a second header in one RevealCheckpoint")
                yield chunk.data

        try:
            ref = BlobRef(h.sha256.lower(), h.size)
            await self.app.rounds.audits.receive(node, h.task_id, h.attempt, h.step, ref, data(), now_ms())
        except (Rejected, NotFound, BlobError, ValueError) as e:
            log.warning("refused checkpoint %d of task %s/%d from %s: %s", h.step, h.task_id[:12], h.attempt, node, e)
            return node_pb2.RevealResponse(accepted=False, reason=str(e))
        return node_pb2.RevealResponse(accepted=True)

    def Serve(
        self, request_iterator: AsyncIterator[serving_pb2.ServeUp], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[serving_pb2.ServeDown]:
        """Real-time serving: replicas assigned and requests sent down, answers and receipts up."""
        return self.serving.serve(request_iterator, context)
