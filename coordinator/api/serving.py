"""The endpoint calls: NodeService.Serve (the node's stream) and SubmitterService's Infer,
Generate, GetEndpoint, ListEndpoints and DeleteEndpoint. Thin: the router does the work.

Only an endpoint's submitter (and the operator) may call, see or delete it; anyone else is
told it does not exist (NOT_FOUND), as for a job (api.submit_service.GetJob).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc

from coordinator.api.auth import RETRY_AFTER_KEY, current_node, current_submitter
from coordinator.api.grid import Grid
from coordinator.api.infer_stream import InferStreams, infer_once
from coordinator.api.sessions import SessionCache
from coordinator.api.status import abort
from coordinator.errors import NotFound, PermissionDenied
from coordinator.kinds.endpoint import NAME as ENDPOINT
from coordinator.services.serving.errors import ServingError
from coordinator.services.serving.model import Endpoint, NodeLink
from tensorgrid.crypto import cancel_message, recover_message_signer
from tensorgrid.errors import SignatureError
from tensorgrid.rpc import RETRY_AFTER_METADATA_KEY
from tensorgrid.serving.coalesce import coalesced
from tensorgrid.spec import EndpointSpec, parse_spec
from tensorgrid.types import JobInfo, JobState
from tensorgrid.v1 import serving_pb2

log = logging.getLogger("tensorgrid.coordinator.serving")


async def refuse(context: grpc.aio.ServicerContext, e: Exception) -> NoReturn:
    """Abort the call with the status an error maps to (a serving refusal: with its retry hint)."""
    if isinstance(e, ServingError):
        trailing: tuple[tuple[str, str], ...] = ()
        if e.retry_after_ms:
            hint = str(e.retry_after_ms)
            trailing = ((RETRY_AFTER_KEY, hint), (RETRY_AFTER_METADATA_KEY, hint))
        await context.abort(getattr(grpc.StatusCode, e.code), str(e), trailing_metadata=trailing)
    await abort(context, e)


def _request_bytes(down: serving_pb2.ServeDown) -> int:
    return sum(len(r.input) for r in down.requests)


class ServingApi:
    def __init__(self, app: Grid, sessions: SessionCache | None = None) -> None:
        """sessions: the submitters' session cache, which an InferStream checks per request
        (None: the node service's, which serves no InferStream)."""
        self.app = app
        self.router = app.serving.router
        self.streams = InferStreams(self._endpoint, self.router, sessions) if sessions is not None else None

    # ---- node -----------------------------------------------------------------------------------
    async def serve(
        self, request_iterator: AsyncIterator[serving_pb2.ServeUp], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[serving_pb2.ServeDown]:
        node = current_node.get()
        up = aiter(request_iterator)
        first = await anext(up, None)
        if first is None or first.WhichOneof("msg") != "hello":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "a Serve stream starts with ServeHello")
            return
        info = await self.app.runtime.db(self.app.store.nodes.get_node, node)
        if info is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown node: register again")
            return
        hello = first.hello
        link = self.router.connect(
            node, info.device_kind, info.memory_bytes, hello.max_replicas, hello.warm_endpoints, hello.counted
        )
        log.info("node %s serves up to %d replicas", node, link.max_replicas)
        reader = asyncio.create_task(self._read(link, up))
        try:
            async for msg in coalesced(link.outbox, ("requests", "counted"), _request_bytes):
                yield msg
        finally:
            reader.cancel()
            self.router.disconnect(link)

    async def _read(self, link: NodeLink, up: AsyncIterator[serving_pb2.ServeUp]) -> None:
        try:
            async for msg in up:
                self.router.on_up(link, msg)
        except (asyncio.CancelledError, grpc.aio.AioRpcError, grpc.aio.AbortError):
            pass
        except Exception:
            log.exception("the Serve stream of node %s failed", link.node)
        finally:
            link.close()

    # ---- submitter ------------------------------------------------------------------------------
    async def _endpoint(self, endpoint_id: str) -> Endpoint:
        me = current_submitter.get()
        operator = self.app.access.is_operator(me)
        try:
            return self.router.endpoint_for(me, endpoint_id, operator)
        except NotFound:  # perhaps created on another replica since this one's last sync
            if endpoint_id in self.router.endpoints or not await self.app.serving.discover(endpoint_id):
                raise
        return self.router.endpoint_for(me, endpoint_id, operator)

    async def infer(
        self, request: serving_pb2.InferRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.InferResponse:
        try:
            ep = await self._endpoint(request.endpoint_id)
            output, node, attempts = await infer_once(self.router, ep, request)
        except Exception as e:
            await refuse(context, e)
        return serving_pb2.InferResponse(output=output, node=node, attempts=attempts)

    def infer_stream(
        self, requests: AsyncIterator[serving_pb2.InferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[serving_pb2.InferResponse]:
        assert self.streams is not None, "InferStream is a SubmitterService call"
        return self.streams.serve(requests, context)

    async def generate(
        self, request: serving_pb2.InferRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[serving_pb2.GenerateChunk]:
        try:
            ep = await self._endpoint(request.endpoint_id)
            async for tokens, done, output, node in self.router.generate(
                ep, request.input, request.timeout_ms, request.seed
            ):
                yield serving_pb2.GenerateChunk(tokens=tokens, done=done, output=output, node=node)
        except Exception as e:
            await refuse(context, e)

    async def get_endpoint(
        self, request: serving_pb2.GetEndpointRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.EndpointStatus:
        try:
            return self.status(await self._endpoint(request.endpoint_id))
        except NotFound:
            pass
        job = await self._endpoint_job(request.endpoint_id)  # one not served here any more (deleted)
        return self.job_status(job)

    async def list_endpoints(
        self, request: serving_pb2.ListEndpointsRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.ListEndpointsResponse:
        me = current_submitter.get()
        operator = self.app.access.is_operator(me)
        mine = [ep for ep in self.router.endpoints.values() if operator or ep.submitter == me]
        mine.sort(key=lambda ep: ep.created_ms, reverse=True)
        return serving_pb2.ListEndpointsResponse(endpoints=[self.status(ep) for ep in mine])

    async def delete_endpoint(
        self, request: serving_pb2.DeleteEndpointRequest, context: grpc.aio.ServicerContext
    ) -> serving_pb2.EndpointStatus:
        me = current_submitter.get()
        job = await self._endpoint_job(request.endpoint_id)
        try:
            signer = recover_message_signer(cancel_message(request.endpoint_id), bytes(request.signature))
        except SignatureError as e:
            raise PermissionDenied(f"bad delete signature: {e}") from None
        if signer != me:
            raise PermissionDenied(f"the deletion is signed by {signer}, not by this session's {me}")
        info = await self.app.serving.delete(request.endpoint_id, job.submitter)
        self.app.runtime.hub.notify(request.endpoint_id)
        ep = self.router.endpoints.get(request.endpoint_id)
        return self.status(ep) if ep is not None else self.job_status(info)

    async def _endpoint_job(self, endpoint_id: str) -> JobInfo:
        job = await self.app.access.job_for(current_submitter.get(), endpoint_id)
        if job.kind != ENDPOINT:
            raise NotFound(f"job {endpoint_id} is not an endpoint (it is a {job.kind} job)")
        return job

    # ---- status ---------------------------------------------------------------------------------
    def status(self, ep: Endpoint) -> serving_pb2.EndpointStatus:
        router = self.router
        p50, p99 = ep.stats.percentiles()
        checked, caught = router.checks.counts(ep.job_id)
        msg = _spec_status(ep.job_id, ep.state, ep.spec, ep.created_ms)
        msg.replicas.extend(
            serving_pb2.ReplicaStatus(
                replica_id=r.replica_id, node=r.node, state=r.state, in_flight=r.in_flight, served=r.served
            )
            for r in ep.replicas.values()
        )
        msg.requests_per_s, msg.p50_ms, msg.p99_ms = ep.stats.requests_per_s(), p50, p99
        msg.requests, msg.errors, msg.checked, msg.caught = ep.stats.requests, ep.stats.errors, checked, caught
        msg.spent_wei = str(router.accounting.spent_wei(ep.job_id))
        msg.queued = ep.waiting
        return msg

    def job_status(self, job: JobInfo) -> serving_pb2.EndpointStatus:
        spec = parse_spec(job.spec_json)
        assert isinstance(spec, EndpointSpec)
        state = "deleted" if job.state == JobState.CANCELLED else "running" if not job.state.finished else "spent"
        msg = _spec_status(job.job_id, state, spec, job.created_ms)
        msg.spent_wei = str(self.router.accounting.spent_wei(job.job_id))
        return msg


def _spec_status(job_id: str, state: str, spec: EndpointSpec, created_ms: int) -> serving_pb2.EndpointStatus:
    return serving_pb2.EndpointStatus(
        endpoint_id=job_id,
        state=state,
        serves=spec.serves,
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        price_wei=str(spec.reward_per_task_wei),
        max_requests=spec.max_requests,
        created_ms=created_ms,
    )
