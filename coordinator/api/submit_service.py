"""SubmitterService: upload blobs, submit, watch, cancel and download jobs."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator

import grpc

from coordinator.api.blobs import receive_upload, stream_blob
from coordinator.api.status import abort, unary
from coordinator.app import Coordinator, now_ms
from coordinator.errors import Conflict, NotFound, PermissionDenied
from coordinator.intake import authenticate, plan_job
from coordinator.ledger import slashing
from coordinator.storage import State
from coordinator.verification.policy import VerificationPolicy
from tensorgrid import serde
from tensorgrid.crypto import cancel_message, normalize_address, recover_message_signer
from tensorgrid.errors import SignatureError, SpecError
from tensorgrid.spec import InferenceSpec, VerificationSpec, parse_spec
from tensorgrid.types import JobInfo, JobVerification
from tensorgrid.v1 import common_pb2, submit_pb2, submit_pb2_grpc

log = logging.getLogger("tensorgrid.coordinator")
WATCH_POLL_S = 1.0


class SubmitterServicer(submit_pb2_grpc.SubmitterServiceServicer):
    def __init__(self, app: Coordinator) -> None:
        self.app = app

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
        app = self.app
        spec_json = bytes(request.spec_json)
        submitter, sh, job_id = authenticate(spec_json, request.submitter, bytes(request.signature))
        try:
            existing = await app.db(app.state.get_job, job_id)  # resubmission: same job
            return serde.job_to_pb(await app.db(with_verification, app.state, existing))
        except NotFound:
            pass
        job, tasks = await app.work(plan_job, spec_json, submitter, sh, job_id, app.blobs, app.config.limits)
        if app.chain is not None:
            if job.reward_per_task_wei <= 0:
                raise Conflict("this coordinator settles on chain: set reward_per_task_wei and fund the escrow")
            budget = await app.work(app.chain.check_escrow, job_id, sh, submitter, job.reward_per_task_wei * len(tasks))
            # Priced before the job exists: a crash in between leaves a harmless orphan price,
            # never an unpriced job whose nodes would go unpaid.
            await app.db(app.ledger.set_job_price, job_id, job.reward_per_task_wei, budget)
        info, created = await app.db_bulk(app.state.create_job, job, tasks, now_ms())
        if created:
            app.hub.work_available()
            log.info("job %s from %s: %s, %d tasks", job_id, submitter, job.kind, len(tasks))
        return serde.job_to_pb(await app.db(with_verification, app.state, info))

    @unary
    async def GetJob(self, request: submit_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> submit_pb2.Job:
        job = await self.app.db(self.app.state.get_job, request.job_id)
        return serde.job_to_pb(await self.app.db(with_verification, self.app.state, job))

    @unary
    async def ListJobs(
        self, request: submit_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.ListJobsResponse:
        jobs = await self.app.db_bulk(self.app.state.list_jobs, request.submitter, request.limit, request.before_job_id)
        return submit_pb2.ListJobsResponse(jobs=[serde.job_to_pb(j) for j in jobs])

    @unary
    async def CancelJob(
        self, request: submit_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.Job:
        app = self.app
        try:
            caller = recover_message_signer(cancel_message(request.job_id), bytes(request.signature))
        except SignatureError as e:
            raise PermissionDenied(f"bad cancel signature: {e}") from None
        info = await app.db(app.state.cancel_job, request.job_id, caller, now_ms())
        app.hub.notify(request.job_id)
        return serde.job_to_pb(await app.db(with_verification, app.state, info))

    async def WatchJob(
        self, request: submit_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[submit_pb2.JobEvent]:
        app = self.app
        seq = request.after_seq
        try:
            await app.db(app.state.get_job, request.job_id)
        except NotFound as e:
            await abort(context, e)
        with app.hub.subscribe(request.job_id) as wake:
            while True:
                wake.clear()
                events = await app.db(app.state.events_after, request.job_id, seq)
                for ev in events:
                    seq = ev.seq
                    yield serde.event_to_pb(ev)
                if events and events[-1].state.finished:
                    return
                if not events:
                    try:
                        await asyncio.wait_for(wake.wait(), WATCH_POLL_S)
                    except TimeoutError:
                        job = await app.db(app.state.get_job, request.job_id)
                        if job.state.finished and not await app.db(app.state.events_after, job.job_id, seq):
                            return

    @unary
    async def ListNodes(
        self, request: submit_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.ListNodesResponse:
        nodes = await self.app.db_bulk(self.app.state.list_nodes_with_reputation)
        return submit_pb2.ListNodesResponse(nodes=[serde.node_to_pb(n) for n in nodes])

    @unary
    async def GetEarnings(
        self, request: submit_pb2.GetEarningsRequest, context: grpc.aio.ServicerContext
    ) -> submit_pb2.Earnings:
        address = normalize_address(request.address)
        e = await self.app.db(self.app.ledger.earnings, address)
        slashed = await self.app.db(self.app.ledger.slashed_wei, address)
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
        async for chunk in stream_blob(self.app.blobs, request, context):
            yield chunk


def with_verification(state: State, job: JobInfo) -> JobInfo:
    """`job` with its verification report: policy, detection, required stake, checks, slashes."""
    stored = state.job_policy(job.job_id)
    checks = state.job_checks(job.job_id)
    with state.engine.connect() as conn:
        slashes, slashed_wei = slashing.job_slashes(conn, job.job_id)
    mode, detection, stake = "none", 0.0, 0
    if stored is not None:
        spec = VerificationSpec(**stored[0])
        mode, stake = spec.mode, stored[1]
        detection = _detection(job, spec)
    report = JobVerification(mode, checks, detection, stake, slashes, slashed_wei)
    return dataclasses.replace(job, verification=report)


def _detection(job: JobInfo, policy: VerificationSpec) -> float:
    """The policy's worst-case per-job detection (a node trusted enough to be checked at the floor rate)."""
    try:
        spec = parse_spec(job.spec_json)
    except SpecError:
        return 0.0
    if not isinstance(spec, InferenceSpec):
        return 0.0  # training audits report their checks; their odds are not modelled here
    return VerificationPolicy(policy, job.tasks_total, spec.shard_rows, spec.reward_per_task_wei).worst_detection
