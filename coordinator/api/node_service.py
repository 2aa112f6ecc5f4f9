"""NodeService: how volunteer nodes register, take work and hand back signed results."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import AsyncIterator

import grpc

from coordinator.api.auth import SessionCache, check_challenge, current_node, make_challenge, token_hash
from coordinator.api.blobs import receive_into, stream_blob
from coordinator.api.status import unary
from coordinator.app import Coordinator, now_ms
from coordinator.errors import Forged, NotFound, PermissionDenied, Rejected
from coordinator.storage import ResultItem
from coordinator.training import check_train_output
from coordinator.verification.records import CHECK_KIND
from tensorgrid import serde
from tensorgrid.crypto import normalize_address, recover_message_signer, registration_message
from tensorgrid.errors import BlobError, HashMismatch, SignatureError
from tensorgrid.types import BlobRef, Receipt
from tensorgrid.v1 import common_pb2, node_pb2, node_pb2_grpc

log = logging.getLogger("tensorgrid.coordinator")
SMALL_OUTPUT_BYTES = 64 * 1024
MAX_LEASE_WAIT_MS = 10_000
IDLE_RETRY_MS = 500  # what leasing answers when there is simply no work


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, app: Coordinator, sessions: SessionCache) -> None:
        self.app = app
        self.sessions = sessions

    @unary
    async def GetChallenge(
        self, request: node_pb2.ChallengeRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.Challenge:
        address = normalize_address(request.address)
        now = now_ms()
        nonce = make_challenge(self.app.challenge_secret, address, now)
        return node_pb2.Challenge(nonce=nonce, expires_at_ms=now + 120_000, domain=serde.domain_to_pb(self.app.domain))

    @unary
    async def Register(
        self, request: node_pb2.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.RegisterResponse:
        app = self.app
        address = normalize_address(request.address)
        now = now_ms()
        check_challenge(app.challenge_secret, address, request.nonce, now)
        try:
            signer = recover_message_signer(registration_message(address, request.nonce, app.domain), request.signature)
        except SignatureError as e:
            raise PermissionDenied(f"bad registration signature: {e}") from None
        if signer != address:
            raise PermissionDenied(f"registration signed by {signer}, not {address}")
        if app.chain is not None:
            await app.work(app.chain.check_node, address)
        caps = serde.caps_from_pb(request.capabilities)
        if caps.device_kind not in ("cpu", "cuda"):
            raise Rejected(f"device_kind must be 'cpu' or 'cuda', got {caps.device_kind!r}")
        token = secrets.token_urlsafe(32)
        await app.db(
            app.state.register_node,
            address,
            caps,
            token_hash(token),
            now,
            app.config.session_ttl_ms,
            request.nonce.hex(),
        )
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
        app = self.app
        active = [(k.task_id, k.attempt) for k in request.active]
        revoked = await app.db(
            app.state.heartbeat, current_node.get(), active, request.draining, now_ms(), app.config.timing
        )
        return node_pb2.HeartbeatResponse(
            revoked=[node_pb2.LeaseKey(task_id=t, attempt=a) for t, a in revoked], server_time_ms=now_ms()
        )

    @unary
    async def LeaseTasks(
        self, request: node_pb2.LeaseRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.LeaseResponse:
        app = self.app
        node = current_node.get()
        await app.verification.refresh_stake(node)  # jobs may need more stake than registering did
        leases, retry = await app.leases.submit((node, request.max_tasks or 1))
        if not leases and request.wait_ms and retry <= IDLE_RETRY_MS:  # idle, not backing off: long poll
            await app.hub.wait_for_work(min(request.wait_ms, MAX_LEASE_WAIT_MS) / 1000)
            leases, retry = await app.leases.submit((node, request.max_tasks or 1))
        app.remember(leases, node)
        for job_id in {lease.job_id for lease in leases}:
            app.hub.notify(job_id)
        return node_pb2.LeaseResponse(leases=[serde.lease_to_pb(x) for x in leases], retry_after_ms=retry)

    async def FetchBlob(
        self, request: common_pb2.FetchBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.BlobChunk]:
        async for chunk in stream_blob(self.app.blobs, request, context):
            yield chunk

    @unary
    async def ReportFailure(
        self, request: node_pb2.FailureReport, context: grpc.aio.ServicerContext
    ) -> node_pb2.FailureAck:
        app = self.app
        node = current_node.get()
        error = serde.error_from_pb(request.error)
        task = await app.task_record(request.task_id)
        reissued = await app.db(app.state.fail_task, node, request.task_id, request.attempt, error, now_ms())
        app.lease_book.pop(request.task_id, None)
        if reissued:
            app.hub.work_available()
        log.info(
            "node %s failed task %s/%d: %s: %s",
            node,
            task.index,
            request.attempt,
            error.kind.value,
            error.message[:200],
        )
        app.hub.notify(task.job_id)
        return node_pb2.FailureAck(reissued=reissued)

    @unary
    async def SubmitResult(
        self, request_iterator: AsyncIterator[node_pb2.ResultChunk], context: grpc.aio.ServicerContext
    ) -> node_pb2.SubmitResultResponse:
        app = self.app
        node = current_node.get()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise Rejected("SubmitResult must start with a header carrying the receipt")
        receipt = serde.receipt_from_pb(first.header.receipt)
        size = first.header.output_size
        try:
            task = await app.task_record(receipt.task_id)
            app.verifier.check_receipt(task, node, receipt)
            if size > app.config.limits.max_output_bytes:
                raise Rejected(f"output of {size} bytes is over the limit of {app.config.limits.max_output_bytes}")
            output = await self._receive_output(receipt, size, request_iterator)
            audit = None
            if task.kind == "training":
                await app.work(
                    check_train_output,
                    app.state,
                    app.blobs,
                    task.task_id,
                    app.blobs.path_for(output.sha256),
                    receipt.commitment,
                )
                audit = await app.rounds.audits.plan(task, node)
            kind = "inference" if task.kind == CHECK_KIND else task.kind
            rows = None
            if kind != "noop":
                rows = await app.work(app.verifier.output_rows, kind, app.blobs.path_for(output.sha256))
            check, verdict = None, None
            if kind == "inference":  # rungs 2-4: open a spot-check of this result, or settle one
                check, verdict = await app.verification.examine(task, node, output)
            item = ResultItem(node, receipt, output, rows, check, verdict, audit)
            job_id, complete = await app.results.submit(item)
        except (Rejected, BlobError, NotFound) as e:
            await self._reject(node, receipt, str(e), forged=isinstance(e, Forged | HashMismatch))
            return node_pb2.SubmitResultResponse(accepted=False, reason=str(e))
        finally:
            app.lease_book.pop(receipt.task_id, None)
        app.hub.notify(job_id)
        if task.kind == "training":  # only a training round can close on a result; others need no wake-up
            app.on_results_accepted([job_id])
        if complete:
            app.schedule_aggregation(job_id)
        return node_pb2.SubmitResultResponse(accepted=True, reveal_steps=audit.steps if audit else ())

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

    async def _receive_output(
        self, receipt: Receipt, size: int, chunks: AsyncIterator[node_pb2.ResultChunk]
    ) -> BlobRef:
        expected = BlobRef(receipt.output_hash, size)

        async def data() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                if chunk.WhichOneof("part") != "data":
                    raise Rejected("a second header in one SubmitResult")
                yield chunk.data

        if size <= SMALL_OUTPUT_BYTES:
            # Small outputs are checked in memory and written only if new: most no-op and
            # tiny results are already in the store, and a file per result costs more than the RPC.
            body = b"".join([piece async for piece in data()])
            if len(body) != size or hashlib.sha256(body).hexdigest() != receipt.output_hash:
                raise HashMismatch(f"output bytes do not hash to the receipt's {receipt.output_hash}")
            if not self.app.blobs.has(receipt.output_hash):
                self.app.blobs.put_bytes(body)
            return expected
        return await receive_into(self.app.blobs.writer(expected), data())

    async def _reject(self, node: str, receipt: Receipt, reason: str, *, forged: bool = False) -> None:
        """Count a refused result against its sender; reissue the task if the sender held its lease."""
        app = self.app
        log.warning("rejected result from %s for task %s/%d: %s", node, receipt.task_id[:12], receipt.attempt, reason)
        try:
            await app.db(
                app.state.reject_task_result, node, receipt.task_id, receipt.attempt, reason, now_ms(), forged=forged
            )
            app.hub.work_available()
        except Exception:
            log.exception("could not record the rejection")
