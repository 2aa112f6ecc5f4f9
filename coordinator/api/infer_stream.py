"""SubmitterService.InferStream: many Infer requests on one open stream (docs/SERVING.md).

A unary Infer costs a gRPC call each (its headers, its stream's set-up and tear-down, a trip
through the interceptors); on one open stream a request is one message each way. Each request
names a `request_id`; its answer, or the refusal a unary Infer would have ended with (code,
message, retry hint), comes back under that id as soon as it is ready, in any order.

The same rules as Infer, per request:
- the session: checked by the interceptor when the stream opens, and again for every request
  (a stream does not outlive its session: a session that expired or was dropped since ends
  the stream with UNAUTHENTICATED; the caller opens a new one);
- who may call which endpoint, the endpoint's admission (RESOURCE_EXHAUSTED with a retry hint
  when every replica is full), the request's deadline (timeout_ms, else the endpoint's) and
  failover: the router's, as for Infer.

Who could abuse it:
- a caller sending requests without waiting for answers: at most INFER_STREAM_IN_FLIGHT are in
  flight on one stream; one more is refused (RESOURCE_EXHAUSTED, with a retry hint) without
  being run. A stream counts as a call and a stream of its peer (api.limits), so a peer holds
  at most streams_per_ip such streams;
- an oversize message: refused by api.limits before it is parsed (the stream ends), as for
  Infer; an endpoint's max_request_bytes is the router's check, as for Infer;
- a request id already in flight on the stream: the stream ends with INVALID_ARGUMENT (two
  answers under one id could not be told apart); its requests in flight are dropped;
- a caller writing requests and never reading the answers: an answer counts as in flight until
  it is queued to be sent, and at most INFER_STREAM_IN_FLIGHT answers (refusals included) wait
  to be sent; with the queue full the stream stops reading the caller's requests, and gRPC's flow
  control stops its writes. Unbounded, the answers (up to 8 MiB each) and refusals would pile up
  in the coordinator's memory for as long as the caller wrote.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from coordinator.api.auth import current_submitter
from coordinator.api.sessions import SessionCache
from coordinator.api.status import status_for
from coordinator.services.serving.errors import ServingError
from coordinator.services.serving.model import Endpoint
from coordinator.services.serving.router import Router
from tensorgrid.rpc import INFER_STREAM_IN_FLIGHT, SESSION_METADATA_KEY
from tensorgrid.serving import trace
from tensorgrid.v1 import serving_pb2

log = logging.getLogger("tensorgrid.coordinator.serving")
IN_FLIGHT_RETRY_MS = 5  # the hint with a request refused for the stream's in-flight bound


class _End:
    """Why the stream ends before its caller closed it (the handler aborts with this)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message


async def infer_once(router: Router, ep: Endpoint, request: serving_pb2.InferRequest) -> tuple[bytes, str, int]:
    """The router's answer to an Infer request (unary or on a stream), run once per request key
    (services.serving.once: a request sent again after a broken stream is not run nor billed twice)."""
    return await router.once.run(
        current_submitter.get(),
        ep.job_id,
        request.request_key,
        request.input,
        lambda: router.infer(ep, request.input, request.timeout_ms, request.seed),
    )


def refusal(request_id: int, e: Exception) -> serving_pb2.InferResponse:
    """The answer under request_id for a request Infer would have refused with e."""
    if isinstance(e, ServingError):
        code, message, hint = getattr(grpc.StatusCode, e.code), str(e), e.retry_after_ms
    else:
        code, message, hint = status_for(e), str(e), 0
        if code == grpc.StatusCode.INTERNAL:
            log.error("an InferStream request failed", exc_info=e)
            message = "internal error in the coordinator; see its log"
    return serving_pb2.InferResponse(request_id=request_id, code=code.value[0], error=message, retry_after_ms=hint)


class InferStreams:
    """Serves InferStream calls: endpoint(id) finds the caller's endpoint (as for Infer), the
    router answers; sessions is the submitters' session cache the interceptor reads."""

    def __init__(
        self,
        endpoint: Callable[[str], Awaitable[Endpoint]],
        router: Router,
        sessions: SessionCache,
        in_flight: int = INFER_STREAM_IN_FLIGHT,
    ) -> None:
        self.endpoint = endpoint
        self.router = router
        self.sessions = sessions
        self.in_flight = in_flight

    async def serve(
        self, requests: AsyncIterator[serving_pb2.InferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[serving_pb2.InferResponse]:
        token = dict(context.invocation_metadata() or ()).get(SESSION_METADATA_KEY, "")
        out: asyncio.Queue[serving_pb2.InferResponse | _End | None] = asyncio.Queue(self.in_flight)
        pending: dict[int, asyncio.Task[None]] = {}
        reader = asyncio.create_task(self._read(requests, str(token), out, pending))
        try:
            while (msg := await out.get()) is not None:
                if isinstance(msg, _End):
                    await context.abort(msg.code, msg.message)  # raises
                    return
                yield msg
        finally:
            reader.cancel()
            for task in list(pending.values()):
                task.cancel()

    async def _read(
        self,
        requests: AsyncIterator[serving_pb2.InferRequest],
        token: str,
        out: asyncio.Queue[serving_pb2.InferResponse | _End | None],
        pending: dict[int, asyncio.Task[None]],
    ) -> None:
        me = current_submitter.get()
        try:
            async for request in requests:
                end = await self._take(request, token, me, out, pending)
                if end is not None:
                    await out.put(end)
                    return
            while pending:  # the caller is done writing: answer what is in flight, then end
                await asyncio.wait(list(pending.values()))
            await out.put(None)
        except (grpc.aio.AioRpcError, grpc.aio.AbortError):
            await out.put(None)
        except Exception:  # the handler must not wait for a reader that is gone
            log.exception("an InferStream failed")
            await out.put(_End(grpc.StatusCode.INTERNAL, "internal error in the coordinator; see its log"))

    async def _take(
        self,
        request: serving_pb2.InferRequest,
        token: str,
        me: str,
        out: asyncio.Queue[serving_pb2.InferResponse | _End | None],
        pending: dict[int, asyncio.Task[None]],
    ) -> _End | None:
        """Start one request; or why the stream must end."""
        if await self.sessions.resolve(token) != me:
            return _End(grpc.StatusCode.UNAUTHENTICATED, "the session expired: open a new one, then a new stream")
        rid = request.request_id
        if rid in pending:
            return _End(grpc.StatusCode.INVALID_ARGUMENT, f"request id {rid} is already in flight on this stream")
        if len(pending) >= self.in_flight:
            message = f"this stream has {len(pending)} requests in flight (limit {self.in_flight})"
            await out.put(  # a full queue waits here: no more of the caller's requests are read
                serving_pb2.InferResponse(
                    request_id=rid,
                    code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                    error=message,
                    retry_after_ms=IN_FLIGHT_RETRY_MS,
                )
            )
            return None
        pending[rid] = asyncio.create_task(self._one(request, out, pending))
        return None

    async def _one(
        self,
        request: serving_pb2.InferRequest,
        out: asyncio.Queue[serving_pb2.InferResponse | _End | None],
        pending: dict[int, asyncio.Task[None]],
    ) -> None:
        rid = request.request_id
        trace.stamp("c.in", rid)
        try:
            try:
                ep = await self.endpoint(request.endpoint_id)
                output, node, attempts = await infer_once(self.router, ep, request)
                answer = serving_pb2.InferResponse(request_id=rid, output=output, node=node, attempts=attempts)
            except Exception as e:
                answer = refusal(rid, e)
            await out.put(answer)  # in flight until queued to be sent
            trace.stamp("c.out", rid)
        finally:
            pending.pop(rid, None)
