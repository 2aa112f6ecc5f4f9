"""The Serve stream over a plain TCP connection: length-prefixed protobuf frames.

An open grpc.aio stream costs a message ~150–200 µs each way on this project's machines (gRPC's
poller thread, its completion queue thread, then the event loop); the same bytes over an
asyncio TCP connection cost ~50. A request crosses the Serve stream twice, so the coordinator
also listens on a serve port (coordinator.api.serve_port) that carries exactly the stream's
messages, ServeUp and ServeDown, and the node's agent uses it when the coordinator names it
(RegisterResponse.serve_port), falling back to NodeService.Serve when it cannot connect.

    greeting (node → coordinator, once) = MAGIC ‖ u16 big-endian n ‖ n bytes: the session token
    frame (either way)                 = u8 kind ‖ u32 big-endian n ‖ n bytes of body
      MESSAGE: one serialized ServeUp (node → coordinator) or ServeDown (coordinator → node)
      STATUS:  the end of that side's stream: u8 gRPC status code ‖ UTF-8 details (0: OK)

The port speaks TLS wherever gRPC does (the same certificate and rule, tensorgrid.tls), and the
token is the node's gRPC session token, so the port authenticates a node exactly as the Serve
call's interceptor does. A connection that ends without a STATUS frame is a broken stream
(UNAVAILABLE), as a gRPC stream without trailers is. Bodies are protobuf, never pickled; a
frame longer than MAX_FRAME_BYTES ends the connection before it is read.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from tensorgrid.rpc import MAX_MESSAGE_BYTES
from tensorgrid.v1 import serving_pb2

__all__ = [
    "MAGIC",
    "MAX_FRAME_BYTES",
    "MAX_TOKEN_BYTES",
    "MESSAGE",
    "READ_BUFFER",
    "STATUS",
    "FramedServeCall",
    "WireError",
    "frame",
    "greeting",
    "read_frame",
    "read_greeting",
    "status_frame",
    "tune",
]

log = logging.getLogger("tensorgrid.serving")

MAGIC = b"TGSERVE1"
MESSAGE, STATUS = 0, 1
MAX_FRAME_BYTES = MAX_MESSAGE_BYTES  # the gRPC stream's message limit, the same here
MAX_TOKEN_BYTES = 256
CONNECT_TIMEOUT_S = 5.0
READ_BUFFER = 1 << 20  # asyncio's read buffer (its default of 64 KiB pauses the socket often on big frames)
KEEPALIVE_S = 30  # an idle connection is probed after this long (as gRPC's keepalive pings)
_HEAD = struct.Struct(">BI")
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class WireError(ConnectionError):
    """The other end broke the framing (oversize frame, unknown kind, bad greeting) or vanished."""


def frame(kind: int, body: bytes) -> bytes:
    return _HEAD.pack(kind, len(body)) + body


def status_frame(code: grpc.StatusCode, details: str = "") -> bytes:
    return frame(STATUS, bytes((code.value[0],)) + details.encode()[:1024])


def greeting(token: str) -> bytes:
    raw = token.encode()
    if len(raw) > MAX_TOKEN_BYTES:
        raise ValueError(f"a session token of {len(raw)} bytes exceeds {MAX_TOKEN_BYTES}")
    return MAGIC + len(raw).to_bytes(2, "big") + raw


async def read_greeting(reader: asyncio.StreamReader) -> str:
    """The session token a connection opens with; WireError for anything else."""
    try:
        head = await reader.readexactly(len(MAGIC) + 2)
        if head[: len(MAGIC)] != MAGIC:
            raise WireError("not a serve-port greeting")
        n = int.from_bytes(head[len(MAGIC) :], "big")
        if n > MAX_TOKEN_BYTES:
            raise WireError(f"a token of {n} bytes exceeds {MAX_TOKEN_BYTES}")
        return (await reader.readexactly(n)).decode("ascii")
    except asyncio.IncompleteReadError:
        raise WireError("the connection closed inside its greeting") from None
    except UnicodeDecodeError:
        raise WireError("a token that is not ASCII") from None


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME_BYTES) -> tuple[int, bytes] | None:
    """The next (kind, body); None when the connection ends between frames; WireError for a
    frame over `limit` (its body is never read), an unknown kind or a cut-off frame."""
    try:
        head = await reader.readexactly(_HEAD.size)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise WireError("the connection closed inside a frame's head") from None
    kind, n = _HEAD.unpack(head)
    if kind not in (MESSAGE, STATUS):
        raise WireError(f"a frame of unknown kind {kind}")
    if n > limit:
        raise WireError(f"a frame of {n} bytes exceeds the limit of {limit}")
    try:
        return kind, await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        raise WireError(f"the connection closed inside a frame ({len(e.partial)} of {n} bytes)") from None


def parse_status(body: bytes) -> tuple[grpc.StatusCode, str]:
    if not body:
        raise WireError("an empty status frame")
    return _CODES.get(body[0], grpc.StatusCode.UNKNOWN), body[1:].decode(errors="replace")


def tune(writer: asyncio.StreamWriter) -> None:
    """TCP_NODELAY (asyncio sets it too) and keepalive probes, so a dead peer behind a NAT is
    noticed as gRPC's keepalive pings notice it."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:
        pass


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The error a gRPC Serve call would raise, so the agent handles both transports alike."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class FramedServeCall:
    """The node's side of a Serve stream on the serve port, shaped like the grpc.aio call it
    replaces: iterate it for ServeDown messages, cancel() to end it. Failures raise
    grpc.aio.AioRpcError (a refusal's own code; a broken connection UNAVAILABLE).

    If the port cannot be reached (connection refused, a firewall, TLS failing), the stream is
    opened as NodeService.Serve instead with fallback(up) and unreachable(reason) is told."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        up: AsyncIterator[serving_pb2.ServeUp],
        tls: ssl.SSLContext | None,
        fallback: Callable[[AsyncIterator[serving_pb2.ServeUp]], Any],
        unreachable: Callable[[BaseException], None],
    ) -> None:
        self.host, self.port, self.token, self.tls = host, port, token, tls
        self._up = up
        self._fallback = fallback
        self._unreachable = unreachable
        self._grpc: Any = None  # the fallback call, once opened
        self._writer: asyncio.StreamWriter | None = None
        self._sending: asyncio.Task[None] | None = None
        self.transport = "tcp"

    def __aiter__(self) -> AsyncIterator[serving_pb2.ServeDown]:
        return self._run()

    def cancel(self) -> None:
        if self._sending is not None:
            self._sending.cancel()
        if self._writer is not None:
            self._writer.close()
        if self._grpc is not None:
            self._grpc.cancel()

    async def _run(self) -> AsyncIterator[serving_pb2.ServeDown]:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                    limit=READ_BUFFER,
                ),
                CONNECT_TIMEOUT_S,
            )
        except (TimeoutError, OSError, ssl.SSLError) as e:
            self._unreachable(e)
            self.transport = "grpc"
            self._grpc = self._fallback(self._up)
            async for msg in self._grpc:
                yield msg
            return
        self._writer = writer
        tune(writer)
        writer.write(greeting(self.token))
        self._sending = asyncio.ensure_future(self._send(writer))
        try:
            while True:
                got = await read_frame(reader)
                if got is None:
                    raise rpc_error(grpc.StatusCode.UNAVAILABLE, "the serve port closed the stream without a status")
                kind, body = got
                if kind == MESSAGE:
                    yield serving_pb2.ServeDown.FromString(body)
                    continue
                code, details = parse_status(body)
                if code != grpc.StatusCode.OK:
                    raise rpc_error(code, details)
                return
        except (WireError, OSError) as e:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"the serve stream broke: {e}") from None
        finally:
            self._sending.cancel()
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        try:
            async for msg in self._up:
                writer.write(frame(MESSAGE, msg.SerializeToString()))
                await writer.drain()
            writer.write(status_frame(grpc.StatusCode.OK))  # half-closed: the node has said all
            await writer.drain()
        except (OSError, RuntimeError):  # the connection went: the reader says how
            writer.close()
