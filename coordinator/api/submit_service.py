"""SubmitterService: open a session, upload blobs, submit, watch, cancel and download jobs.

Every call but the public ones runs as the session's submitter (auth.current_submitter). A job
or blob of another submitter answers NOT_FOUND, exactly as one that does not exist; the
operator (--operator-address) sees every job and blob.

OpenSession opens a full session (scope "") or a read-only dashboard one (scope "dashboard",
the link `tensorgrid dashboard` prints): that one goes to its own table and cache, which the
session interceptor never reads, so its token is worth nothing here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator

import grpc

from coordinator.api.auth import CHALLENGE_TTL_MS, check_challenge, current_submitter, make_challenge
from coordinator.api.blobs import receive_upload, stream_blob
from coordinator.api.bulk import BulkPort
from coordinator.api.grid import Grid
from coordinator.api.serving import ServingApi
from coordinator.api.sessions import SessionCache, token_hash
from coordinator.api.status import abort, request_address, unary
from coordinator.errors import Conflict, InvalidArgument, NotFound, PermissionDenied
from coordinator.services.runtime import now_ms
from tensorgrid import serde
from tensorgrid.blobs import check_sha256
from tensorgrid.crypto import (
    DASHBOARD_SCOPE,
    FULL_SCOPE,
    SESSION_SCOPES,
    cancel_message,
    recover_message_signer,
    session_message,
)
from tensorgrid.errors import BlobError, SignatureError
from tensorgrid.types import JobInfo, JobState
from tensorgrid.v1 import common_pb2, serving_pb2, submit_pb2, submit_pb2_grpc

log = logging.getLogger("tensorgrid.coordinator")
WATCH_POLL_S = 1.0
WATCH_PAGE = 500  # events read from the database at a time


class SubmitterServicer(submit_pb2_grpc.SubmitterServiceServicer):
    def __init__(
        self, app: Grid, sessions: SessionCache, dashboards: SessionCache, bulk: BulkPort | None = None
    ) -> None:
        self.app = app
        # scope → (the repository's kind of session, its cache, how long it lives)
        self.scopes = {
            FULL_SCOPE: ("submitter", sessions, app.config.session_ttl_ms),
            DASHBOARD_SCOPE: ("dashboard", dashboards, app.config.dashboard_session_ttl_ms),
        }
        self.bulk = bulk
        self.access = app.access
        self.db = app.runtime.db
        self.db_bulk = app.runtime.db_bulk
        self.jobs = app.store.jobs
        self.report = app.reports.with_verification
        self.serving = ServingApi(app, sessions)

    @unary
    async def GetChallenge(
        self, request: submit_pb2.SessionChallengeRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.SessionChallenge:
        address = request_address(request.address)
        now = now_ms()
        nonce = make_challenge(self.app.challenge_secret, address, now)
        return submit_pb2.SessionChallenge(nonce=nonce, expires_at_ms=now + CHALLENGE_TTL_MS)

    @unary
    async def OpenSession(
        self, request: submit_pb2.OpenSessionRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.Session:
        app = self.app
        address = request_address(request.address)
        if request.scope not in SESSION_SCOPES:
            raise InvalidArgument(f"scope: {request.scope[:40]!r} is none of {', '.join(map(repr, SESSION_SCOPES))}")
        kind, cache, ttl = self.scopes[request.scope]
        now = now_ms()
        check_challenge(app.challenge_secret, address, request.nonce, now)
        try:
            # the scope is in the signed text: a signature opens the scope it was made for, no other
            message = session_message(address, request.nonce, request.scope)
            signer = recover_message_signer(message, request.signature)
        except SignatureError as e:
            raise PermissionDenied(f"bad session signature: {e}") from None
        if signer != address:
            raise PermissionDenied(f"session signed by {signer}, not {address}")
        token = secrets.token_urlsafe(32)
        dropped = await self.db(
            app.store.sessions.open_session,
            address,
            token_hash(token),
            request.nonce.hex(),
            now,
            ttl,
            app.config.sessions.max_per_address,
            kind,
        )
        cache.discard(dropped)
        cache.add(token, address, now + ttl)
        return submit_pb2.Session(session_token=token, expires_at_ms=now + ttl)

    @unary
    async def UploadBlob(
        self, request_iterator: AsyncIterator[submit_pb2.UploadChunk], context: grpc.aio.ServicerContext
    ) -> common_pb2.BlobRef:
        me = current_submitter.get()

        async def admit(size: int) -> None:
            await self.access.check_upload(me, size)

        async def owned(sha256: str) -> bool:
            return await self.access.owns(me, sha256)

        ref, received = await receive_upload(self.app.blobs, request_iterator, admit, owned)
        await self.access.record_upload(me, ref, received)
        self.app.metrics.moved("in", "grpc", received)
        log.info("stored blob %s (%d bytes) for %s", ref.sha256, ref.size, me)
        return serde.blob_to_pb(ref)

    @unary
    async def OpenBulkUpload(
        self, request: submit_pb2.BulkUploadRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.BulkTicket:
        bulk = self._bulk_port()
        me = current_submitter.get()
        if request.sha256:
            sha256 = check_sha256(request.sha256)
            if self.app.blobs.has(sha256) and self.app.blobs.ref(sha256).size == request.size:
                if await self.access.owns(me, sha256):
                    return submit_pb2.BulkTicket(stored=common_pb2.BlobRef(sha256=sha256, size=request.size))
        if request.size > self.app.blobs.max_blob_bytes:
            raise BlobError(f"blob of {request.size} bytes is over the limit of {self.app.blobs.max_blob_bytes} bytes")
        await self.access.check_upload(me, request.size)
        return bulk.issue(me, upload=True, size=request.size)

    @unary
    async def OpenBulkDownload(
        self, request: common_pb2.FetchBlobRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.BulkTicket:
        bulk = self._bulk_port()
        me = current_submitter.get()
        sha256 = check_sha256(request.sha256.lower())
        await self._check_download(me, sha256)
        size = self.app.blobs.ref(sha256).size
        if request.offset > size:
            raise BlobError(f"offset {request.offset} is past the end of blob {sha256} ({size} bytes)")
        return bulk.issue(me, upload=False, size=size - request.offset, sha256=sha256, offset=request.offset)

    def _bulk_port(self) -> BulkPort:
        if self.bulk is None:
            raise Conflict("this coordinator serves no bulk port (--bulk-listen off): use UploadBlob and DownloadBlob")
        return self.bulk

    async def _check_download(self, me: str, sha256: str) -> None:
        """What DownloadBlob and a bulk download both require: the caller may read the blob, and
        it is no result withheld until its escrow is locked."""
        await self.access.check_submitter_read(me, sha256)
        held_by = await self.db(self.app.ledger.withheld_blob, sha256)
        if held_by is not None:
            raise Conflict(
                f"the result of job {held_by} is released once its escrow is locked on chain: try again shortly"
            )

    @unary
    async def SubmitJob(
        self, request: submit_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.Job:
        me = current_submitter.get()
        if request_address(request.submitter, "submitter") != me:
            raise PermissionDenied(
                f"this session is {me}'s: submit as {me}, or open a session with {request.submitter}"
            )
        info = await self.app.intake.submit(bytes(request.spec_json), request.submitter, bytes(request.signature))
        await self.app.serving.opened(info)  # an endpoint is served from now on
        return serde.job_to_pb(info)

    @unary
    async def ValidateJob(
        self, request: submit_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.ValidateJobResponse:
        me = current_submitter.get()
        if request_address(request.submitter, "submitter") != me:
            raise PermissionDenied(f"this session is {me}'s: validate as {me}")
        v = await self.app.intake.validate(bytes(request.spec_json), request.submitter, bytes(request.signature))
        return submit_pb2.ValidateJobResponse(job_id=v.job_id, tasks=v.tasks, paid_tasks=v.paid_tasks, exists=v.exists)

    @unary
    async def GetJob(self, request: submit_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> submit_pb2.Job:
        job = await self.access.job_for(current_submitter.get(), request.job_id)
        return serde.job_to_pb(await self.db(self.report, job))

    @unary
    async def ListJobs(
        self, request: submit_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.ListJobsResponse:
        submitter = self.access.list_filter(current_submitter.get(), request.submitter)
        jobs = await self.db_bulk(self.jobs.list_jobs, submitter, request.limit, request.before_job_id)
        return submit_pb2.ListJobsResponse(jobs=[serde.job_to_pb(j) for j in jobs])

    @unary
    async def CancelJob(
        self, request: submit_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.Job:
        me = current_submitter.get()
        job = await self.access.job_for(me, request.job_id)
        try:
            signer = recover_message_signer(cancel_message(request.job_id), bytes(request.signature))
        except SignatureError as e:
            raise PermissionDenied(f"bad cancel signature: {e}") from None
        if signer != me:
            raise PermissionDenied(f"the cancellation is signed by {signer}, not by this session's {me}")
        _require_cancellable(job)
        if self.app.serving.serves(job):
            info = await self.app.serving.delete(request.job_id, job.submitter)
        else:
            info = await self.db(self.jobs.cancel_job, request.job_id, job.submitter, now_ms())
        self.app.runtime.hub.notify(request.job_id)
        _require_cancellable(info)  # it finished while we cancelled: it stays as it ended
        return serde.job_to_pb(await self.db(self.report, info))

    async def WatchJob(
        self, request: submit_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[submit_pb2.JobEvent]:
        hub, db, jobs = self.app.runtime.hub, self.db, self.jobs
        seq = request.after_seq
        try:
            await self.access.job_for(current_submitter.get(), request.job_id)
        except Exception as e:
            await abort(context, e)
        with hub.subscribe(request.job_id) as wake:
            while True:
                wake.clear()
                events = await db(jobs.events_after, request.job_id, seq, WATCH_PAGE)
                for ev in events:
                    seq = ev.seq
                    yield serde.event_to_pb(ev)
                if events and events[-1].state.finished:
                    return
                if request.recorded_only and len(events) < WATCH_PAGE:  # the record is sent: end
                    return
                if not events:
                    try:
                        await asyncio.wait_for(wake.wait(), WATCH_POLL_S)
                    except TimeoutError:
                        job = await db(jobs.get_job, request.job_id)
                        if job.state.finished and not await db(jobs.events_after, job.job_id, seq):
                            return

    @unary
    async def ListNodes(
        self, request: submit_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.ListNodesResponse:
        nodes = await self.db_bulk(self.app.store.list_nodes_with_reputation)
        return submit_pb2.ListNodesResponse(nodes=[serde.node_to_pb(n) for n in nodes])

    @unary
    async def GetEarnings(
        self, request: submit_pb2.GetEarningsRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.Earnings:
        address = request_address(request.address)
        e = await self.db(self.app.ledger.earnings, address)
        slashed = await self.db(self.app.ledger.slashed_wei, address)
        claim = e["claimable"]
        return submit_pb2.Earnings(
            address=address,
            cumulative_wei=str(e["cumulative_wei"]),
            pending_wei=str(e["pending_wei"]),
            claim_epoch=claim["epoch"] if claim else 0,
            claim_cumulative_wei=str(claim["cumulative_wei"]) if claim else "0",
            claim_proof=[bytes.fromhex(p.removeprefix("0x")) for p in claim["proof"]] if claim else [],
            slashed_wei=str(slashed),
        )

    @unary
    async def GetEpoch(
        self, request: submit_pb2.GetEpochRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.Epoch:
        record = await self.db(self.app.ledger.epoch, request.epoch)
        if record is None:
            raise NotFound(f"no epoch {request.epoch}" if request.epoch else "no epoch yet")
        return submit_pb2.Epoch(
            epoch=record["epoch"],
            root=record["root"],
            state=record["state"],
            total_wei=str(record["total_wei"]),
            created_ms=record["created_ms"],
            leaves=[submit_pb2.EpochLeaf(node=n, cumulative_wei=str(w)) for n, w in record["leaves"]],
        )

    async def DownloadBlob(
        self, request: common_pb2.FetchBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.BlobChunk]:
        try:
            await self._check_download(current_submitter.get(), request.sha256.lower())
        except Exception as e:
            await abort(context, e)
        async for chunk in stream_blob(self.app.blobs, request, context):
            self.app.metrics.moved("out", "grpc", len(chunk.data))
            yield chunk

    # ---- endpoints (api.serving) ----------------------------------------------------------------
    async def Infer(
        self, request: serving_pb2.InferRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.InferResponse:
        return await self.serving.infer(request, context)

    def InferStream(
        self, request_iterator: AsyncIterator[serving_pb2.InferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[serving_pb2.InferResponse]:
        return self.serving.infer_stream(request_iterator, context)

    def Generate(
        self, request: serving_pb2.InferRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[serving_pb2.GenerateChunk]:
        return self.serving.generate(request, context)

    @unary
    async def GetEndpoint(
        self, request: serving_pb2.GetEndpointRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.EndpointStatus:
        return await self.serving.get_endpoint(request, context)

    @unary
    async def ListEndpoints(
        self, request: serving_pb2.ListEndpointsRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.ListEndpointsResponse:
        return await self.serving.list_endpoints(request, context)

    @unary
    async def DeleteEndpoint(
        self, request: serving_pb2.DeleteEndpointRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.EndpointStatus:
        return await self.serving.delete_endpoint(request, context)


def _require_cancellable(job: JobInfo) -> None:
    """A job that succeeded or failed cannot be cancelled (FAILED_PRECONDITION); cancelling a
    cancelled job again answers it as it is, so a retried CancelJob is harmless."""
    if job.state.finished and job.state != JobState.CANCELLED:
        raise Conflict(f"job {job.job_id} already {job.state.value}: there is nothing to cancel")
