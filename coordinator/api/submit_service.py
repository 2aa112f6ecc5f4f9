"""SubmitterService: upload blobs, submit, watch, cancel and download jobs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from coordinator.api.blobs import receive_upload, stream_blob
from coordinator.api.grid import Grid
from coordinator.api.status import abort, unary
from coordinator.errors import NotFound, PermissionDenied
from coordinator.services.runtime import now_ms
from tensorgrid import serde
from tensorgrid.crypto import cancel_message, normalize_address, recover_message_signer
from tensorgrid.errors import SignatureError
from tensorgrid.v1 import common_pb2, submit_pb2, submit_pb2_grpc

log = logging.getLogger("tensorgrid.coordinator")
WATCH_POLL_S = 1.0


class SubmitterServicer(submit_pb2_grpc.SubmitterServiceServicer):
    def __init__(self, app: Grid) -> None:
        self.app = app
        self.db = app.runtime.db
        self.db_bulk = app.runtime.db_bulk
        self.jobs = app.store.jobs
        self.report = app.reports.with_verification

    @unary
    async def UploadBlob(
        self, request_iterator: AsyncIterator[submit_pb2.UploadChunk], context: grpc.aio.ServicerContext
    ) -> common_pb2.BlobRef:
        ref = await receive_upload(self.app.blobs, request_iterator)
        log.info("stored blob %s (%d bytes)", ref.sha256, ref.size)
        return serde.blob_to_pb(ref)

    @unary
    async def SubmitJob(
        self, request: submit_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.Job:
        info = await self.app.intake.submit(bytes(request.spec_json), request.submitter, bytes(request.signature))
        return serde.job_to_pb(info)

    @unary
    async def GetJob(self, request: submit_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> submit_pb2.Job:
        job = await self.db(self.jobs.get_job, request.job_id)
        return serde.job_to_pb(await self.db(self.report, job))

    @unary
    async def ListJobs(
        self, request: submit_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.ListJobsResponse:
        jobs = await self.db_bulk(self.jobs.list_jobs, request.submitter, request.limit, request.before_job_id)
        return submit_pb2.ListJobsResponse(jobs=[serde.job_to_pb(j) for j in jobs])

    @unary
    async def CancelJob(
        self, request: submit_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.Job:
        try:
            caller = recover_message_signer(cancel_message(request.job_id), bytes(request.signature))
        except SignatureError as e:
            raise PermissionDenied(f"bad cancel signature: {e}") from None
        info = await self.db(self.jobs.cancel_job, request.job_id, caller, now_ms())
        self.app.runtime.hub.notify(request.job_id)
        return serde.job_to_pb(await self.db(self.report, info))

    async def WatchJob(
        self, request: submit_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[submit_pb2.JobEvent]:
        hub, db, jobs = self.app.runtime.hub, self.db, self.jobs
        seq = request.after_seq
        try:
            await db(jobs.get_job, request.job_id)
        except NotFound as e:
            await abort(context, e)
        with hub.subscribe(request.job_id) as wake:
            while True:
                wake.clear()
                events = await db(jobs.events_after, request.job_id, seq)
                for ev in events:
                    seq = ev.seq
                    yield serde.event_to_pb(ev)
                if events and events[-1].state.finished:
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
        address = normalize_address(request.address)
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

    async def DownloadBlob(
        self, request: common_pb2.FetchBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.BlobChunk]:
        held_by = await self.db(self.app.ledger.withheld_blob, request.sha256)
        if held_by is not None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the result of job {held_by} is released once its escrow is locked on chain: try again shortly",
            )
        async for chunk in stream_blob(self.app.blobs, request, context):
            yield chunk
