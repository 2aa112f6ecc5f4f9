"""gRPC settings shared by every TensorGrid process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Coroutine, Sequence
from typing import Any, TypeVar

from tensorgrid.retry import backoff

T = TypeVar("T")
SESSION_METADATA_KEY = "x-tensorgrid-session"
# Blobs travel in 1 MiB chunks; control messages are small. 8 MiB leaves headroom for
# a chunk plus framing and keeps a hostile sender from making us buffer much more.
MAX_MESSAGE_BYTES = 8 << 20
# A result output up to this size travels in one unary SubmitSmallResult: a client stream costs
# both ends more CPU than a unary call, and most no-op and small inference outputs fit.
SMALL_RESULT_BYTES = 64 * 1024
# Retry hint (milliseconds) a server sends, in trailing metadata, with RESOURCE_EXHAUSTED.
RETRY_AFTER_METADATA_KEY = "x-tensorgrid-retry-after-ms"
# The coordinator's go-ahead for a client stream (initial metadata, sent once the call is past
# authentication and admission): see send_admitted.
GO_AHEAD_METADATA_KEY = "x-tensorgrid-go-ahead"
# How long a client stream waits for that go-ahead before it sends anyway (a coordinator from
# before the go-ahead never sends one; normally it, or the refusal, comes within a round trip).
GO_AHEAD_WAIT_S = 10.0

# The largest request message each method takes (the server refuses bigger ones with
# RESOURCE_EXHAUSTED before parsing them). MAX_MESSAGE_BYTES stays the transport's ceiling;
# a method not listed here takes control-sized messages only.
CONTROL_MESSAGE_BYTES = 64 * 1024
CHUNK_MESSAGE_BYTES = (1 << 20) + 64 * 1024  # one 1 MiB blob chunk (or a header) and framing
_NODE = "/tensorgrid.v1.NodeService/"
_SUBMIT = "/tensorgrid.v1.SubmitterService/"
REQUEST_LIMITS: dict[str, int] = {
    _NODE + "Heartbeat": 256 * 1024,  # up to a thousand or so active leases
    _NODE + "SubmitSmallResult": SMALL_RESULT_BYTES + 16 * 1024,
    _NODE + "SubmitResult": CHUNK_MESSAGE_BYTES,
    _NODE + "RevealCheckpoint": CHUNK_MESSAGE_BYTES,
    _SUBMIT + "UploadBlob": CHUNK_MESSAGE_BYTES,
    _SUBMIT + "SubmitJob": 1 << 20,  # a spec and its signature
    _SUBMIT + "ValidateJob": 1 << 20,  # the same
    # serving: one request's or one answer's tensors (an endpoint's max_request_bytes bounds
    # requests further); the transport's ceiling bounds them all
    _NODE + "Serve": MAX_MESSAGE_BYTES,
    _SUBMIT + "Infer": MAX_MESSAGE_BYTES,
    _SUBMIT + "InferStream": MAX_MESSAGE_BYTES,
    _SUBMIT + "Generate": MAX_MESSAGE_BYTES,
}


# Requests one InferStream carries at once: one more is refused (RESOURCE_EXHAUSTED) unrun; the
# SDK sends a call beyond it as a unary Infer instead.
INFER_STREAM_IN_FLIGHT = 64


def request_limit(method: str) -> int:
    """The largest request message `method` (a full gRPC method name) accepts."""
    return REQUEST_LIMITS.get(method, CONTROL_MESSAGE_BYTES)


def retry_after_s(error: object, failures: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """How long to wait before retrying a call the server refused as RESOURCE_EXHAUSTED: the
    server's hint when it sent one, else exponential backoff over the consecutive `failures`."""
    try:
        trailing = error.trailing_metadata() or ()  # type: ignore[attr-defined]
        hint = dict(trailing).get(RETRY_AFTER_METADATA_KEY)
        if hint is not None:
            return min(cap_s, max(0.0, int(hint) / 1000) * (1 + 0.5 * max(0, failures - 1)))
    except (AttributeError, TypeError, ValueError):
        pass
    return backoff(failures, base_s, cap=cap_s)


RECONNECT_MAX_MS = 2_000

# Idle nodes long-poll LeaseTasks: a node asks to be held LEASE_WAIT_MS, the coordinator holds
# a call at most MAX_LEASE_WAIT_MS. Work reaches a waiting node at once whatever the wait (the
# coordinator wakes its waiters, and finds another replica's work within a second), so the
# wait sets the idle cost: each idle node asks about once per wait (plus the 0.5 s retry hint),
# ~1,000 LeaseTasks a second for 5,000 idle nodes at 5 s, ~200 at 25 s. Why not longer: a proxy
# in front of the coordinator must let one call last the wait (GCP's load balancer ends one at
# 30 s by default, nginx's grpc_read_timeout at 60 s; Envoy's 15 s route timeout must be
# raised). The call's deadline is the client's timeout on top of the wait. A coordinator that
# dies closes its sockets and fails the poll at once; one that vanishes without a word (host
# down, partition) is found by the keepalive below (a ping every 30 s, 10 s to answer).
LEASE_WAIT_MS = 25_000
MAX_LEASE_WAIT_MS = 30_000


def channel_options() -> Sequence[tuple[str, int]]:
    """Options for every channel and server: message limits, keepalive for NAT, and reconnects.

    gRPC waits between attempts to reconnect a channel whose server went away, the wait growing
    1.6× each time up to two minutes: a node that lost its coordinator for half a minute went on
    failing for up to 38 s after it came back. A channel here waits at most RECONNECT_MAX_MS."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
    ]


def server_options() -> Sequence[tuple[str, int]]:
    return [
        *channel_options(),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
    ]


async def unless_set(call: Coroutine[Any, Any, T], stop: asyncio.Event) -> asyncio.Future[T] | None:
    """Run `call` (a long poll) until it ends or `stop` is set (a drain): the ended call, its
    result or error to take, or None when `stop` came first. The call is then cancelled, and
    the error gRPC ends it with (CANCELLED) is taken here, never logged as never retrieved."""
    task = asyncio.ensure_future(call)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        return task
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return None


async def send_admitted(call: Any, messages: AsyncIterable[Any], wait_s: float = GO_AHEAD_WAIT_S) -> Any:
    """Send `messages` into a client-streaming grpc.aio `call` (made without a request iterator)
    once the server has admitted it, and return its answer (or raise its AioRpcError).

    grpc.aio reports a status that comes while the client is still writing as INTERNAL ("Internal
    error from Core", grpc/grpc#36066): a call refused at its start, for a stale session
    (UNAUTHENTICATED: register again) or a limit (RESOURCE_EXHAUSTED: retry), could read as a
    refusal for good (a few in a hundred of a node's 8 MiB results; most refusals of a bare
    server), and a node then dropped the finished result it was handing in. The coordinator sends
    its go-ahead (GO_AHEAD_METADATA_KEY) once a call is admitted; until then nothing is written,
    so a refusal arrives with its own code. A server that answers before the stream ends (it
    refused the content) may still read as INTERNAL: that is a refusal too. A server that sends no
    go-ahead (one from before it) gets the messages after wait_s. Cancelled, the call ends too."""
    metadata = asyncio.ensure_future(call.initial_metadata())
    metadata.add_done_callback(lambda done: done.cancelled() or done.exception())
    try:
        await asyncio.wait({metadata}, timeout=wait_s)
        go = not metadata.done() or any(key == GO_AHEAD_METADATA_KEY for key, _ in metadata.result() or ())
        if go:
            try:
                async for message in messages:
                    await call.write(message)
                await call.done_writing()
            except asyncio.InvalidStateError:  # answered already: its status is the call's own
                pass
        return await call
    except asyncio.CancelledError:
        call.cancel()
        raise
