"""The coordinator's serve port: nodes' Serve streams as length-prefixed protobuf frames over
TCP (tensorgrid.serving.wire has the format and why), beside NodeService.Serve.

The stream is the one api.serving handles for gRPC (attach, then stream): only the transport
differs. A node learns the port from RegisterResponse.serve_port (and HeartbeatResponse, after
moving to another coordinator replica) and dials the host it reaches gRPC on.

Who could abuse the port, and what stops them:
- a stranger, or someone posing as another node: the greeting must carry a live node session
  token (the gRPC session, from a Register signed with the node's key; the same cache and
  check as the session interceptor), within hello_timeout_s, or the connection ends with
  UNAUTHENTICATED. The stream then belongs to the token's node, whatever its messages say;
- a captured stream replayed: with TLS on the coordinator the port speaks TLS with its
  certificate (the rule of tensorgrid.tls: plain text only where gRPC serves plain text), so
  there is nothing to capture; a session token is what a gRPC call carries in its metadata;
- guessing tokens: failures count against the peer's address in the limiter gRPC uses
  (FailureLimiter), and past it the port refuses with RESOURCE_EXHAUSTED before reading one;
- oversize or malformed frames: a frame's length is read first and a frame over
  wire.MAX_FRAME_BYTES (gRPC's message limit) or of an unknown kind ends the connection before
  its body is read; a greeting's token is at most 256 bytes; bodies are parsed as protobuf
  only, never unpickled; what a parsed message says is checked as on gRPC (router.on_up);
- many connections: at most pending_per_ip connections of one address may be unauthenticated
  at once, and an authenticated stream counts against the node's streams in the same
  PeerLimiter as gRPC's calls (a second stream of a node replaces its first, router.connect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator

import grpc

from coordinator.api.limits import PeerLimiter
from coordinator.api.serving import ServingApi, StreamRefused
from coordinator.api.sessions import FailureLimiter, SessionCache
from coordinator.config import CoordinatorConfig, ServeSettings
from tensorgrid import tls
from tensorgrid.errors import TensorGridError
from tensorgrid.serving import wire
from tensorgrid.tls import host_of
from tensorgrid.v1 import serving_pb2

log = logging.getLogger("tensorgrid.coordinator.serving")


class ServePort:
    """The listening socket and the streams on it."""

    def __init__(
        self,
        settings: ServeSettings,
        api: ServingApi,
        nodes: SessionCache,
        failures: FailureLimiter,
        peers: PeerLimiter,
        context: ssl.SSLContext | None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.nodes = nodes
        self.failures = failures
        self.peers = peers
        self.context = context
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pending: dict[str, int] = {}  # unauthenticated connections per address

    async def start(self, host: str, port: int) -> int:
        if self.context is None:
            self._server = await asyncio.start_server(self._connection, host, port, limit=wire.READ_BUFFER)
        else:
            self._server = await asyncio.start_server(
                self._connection,
                host,
                port,
                limit=wire.READ_BUFFER,
                ssl=self.context,
                ssl_handshake_timeout=self.settings.hello_timeout_s,
            )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def run(self) -> None:
        """Serve until cancelled (the coordinator's runtime stops it), then close the port."""
        try:
            await asyncio.Event().wait()
        finally:
            self.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?",)
        ip = str(peer[0])
        host = f"ipv6:[{ip}]" if ":" in ip else f"ipv4:{ip}"  # sessions.peer_host's form: one count with gRPC
        wire.tune(writer)
        try:
            await self._serve(reader, writer, ip, host)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("a serve-port connection from %s failed", ip)
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: str, host: str) -> None:
        if self._pending.get(ip, 0) >= self.settings.pending_per_ip:
            await _end(writer, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many unauthenticated connections")
            return
        self._pending[ip] = self._pending.get(ip, 0) + 1
        try:
            opened = await asyncio.wait_for(self._open(reader, writer, host), self.settings.hello_timeout_s)
        except TimeoutError:
            await _end(writer, grpc.StatusCode.DEADLINE_EXCEEDED, "no greeting and ServeHello in time")
            return
        except wire.WireError as e:
            self.failures.failed(host)
            await _end(writer, grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        finally:
            left = self._pending[ip] - 1
            if left:
                self._pending[ip] = left
            else:
                del self._pending[ip]
        if opened is None:
            return
        node, first = opened
        refusal = self.peers.acquire(node, True, True)
        if refusal is not None:
            await _end(writer, grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            return
        try:
            try:
                link = await self.api.attach(node, first, via="the serve port")
            except StreamRefused as e:
                await _end(writer, e.code, e.details)
                return
            broken: list[wire.WireError] = []
            # closed at once if a write fails (the node vanished): its replicas' calls fail over now
            async with contextlib.aclosing(self.api.stream(link, _messages(reader, broken))) as down:
                async for msg in down:
                    writer.write(wire.frame(wire.MESSAGE, msg.SerializeToString()))
                    await writer.drain()
            if broken:  # the node broke the framing (an oversize frame among them): say so
                await _end(writer, grpc.StatusCode.INVALID_ARGUMENT, str(broken[0]))
            else:
                await _end(writer, grpc.StatusCode.OK)
        finally:
            self.peers.release(node, True)

    async def _open(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str
    ) -> tuple[str, serving_pb2.ServeUp | None] | None:
        """The node a connection authenticates as and its first message; None once refused."""
        wait = self.failures.retry_after_ms(host)
        if wait:
            why = f"too many failed authentications: retry in {wait} ms"
            await _end(writer, grpc.StatusCode.RESOURCE_EXHAUSTED, why)
            return None
        token = await wire.read_greeting(reader)
        node = await self.nodes.resolve(token) if token else None
        if node is None:
            self.failures.failed(host)
            await _end(writer, grpc.StatusCode.UNAUTHENTICATED, "no valid session: register again")
            return None
        got = await wire.read_frame(reader)
        if got is None or got[0] != wire.MESSAGE:
            return node, None
        return node, serving_pb2.ServeUp.FromString(got[1])


async def _messages(reader: asyncio.StreamReader, broken: list[wire.WireError]) -> AsyncIterator[serving_pb2.ServeUp]:
    """The node's messages until its STATUS frame (it half-closed); WireError (also put in
    `broken`) if it breaks the framing or vanishes."""
    while True:
        try:
            got = await wire.read_frame(reader)
            if got is None:
                raise wire.WireError("the node's connection closed without a status")
        except wire.WireError as e:
            broken.append(e)
            raise
        kind, body = got
        if kind == wire.STATUS:
            return
        yield serving_pb2.ServeUp.FromString(body)


async def _end(writer: asyncio.StreamWriter, code: grpc.StatusCode, details: str = "") -> None:
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(wire.status_frame(code, details))
        await writer.drain()


async def open_serve_port(
    config: CoordinatorConfig, api: ServingApi, nodes: SessionCache, failures: FailureLimiter, peers: PeerLimiter
) -> ServePort | None:
    """Start the serve port config.serve asks for (None when it is off), under the TLS rule of
    gRPC (tensorgrid.tls), as the bulk port does."""
    settings = config.serve
    if not settings.enabled:
        return None
    listen = settings.listen or f"{host_of(config.listen)}:0"
    secure = tls.check_listen(listen, config.tls_cert, config.tls_key, config.insecure)
    context = None
    if secure:
        assert config.tls_cert is not None and config.tls_key is not None
        context = tls.server_context(config.tls_cert, config.tls_key)
    port = ServePort(settings, api, nodes, failures, peers, context)
    host, _, number = listen.rpartition(":")
    try:
        number_ = int(number)
    except ValueError:
        raise TensorGridError(f"--serve-listen {listen!r} is not HOST:PORT or off") from None
    await port.start(host.strip("[]"), number_)
    log.info("serve port %s:%d (%s)", host, port.port, "TLS" if secure else "plain text")
    return port
