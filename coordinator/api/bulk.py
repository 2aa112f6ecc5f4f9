"""The coordinator's bulk port: blob bytes beside gRPC, admitted by one-time tickets.

tensorgrid.blobs.bulk has the wire format and why it exists. SubmitterService issues the tickets
(after the same checks as UploadBlob and DownloadBlob); this module holds them and serves the
port. Each transfer runs on its own thread with blocking sockets, as a plain TCP receiver would:
the event loop, busy with gRPC, never touches the bytes. Receiving overlaps hashing and writing
(one chunk behind), and a download is sendfile()d from the store.

Who could abuse the port, and what stops them:
- a stranger with no ticket: the first 36 bytes must carry a live token, within hello_timeout_s,
  or the connection closes; a wrong or used token reads "unknown or expired ticket";
- a ticket holder replaying its token: a token is taken on first use, and dies after ticket_ttl_ms;
- a sender who sends fewer bytes, stalls (idle_timeout_s), or a digest its bytes do not match:
  nothing is stored or recorded, the temp file is deleted, the quota untouched;
- anyone opening many connections: at most max_transfers at once, per_ip of them from one
  address; beyond that a connection is refused with a line saying so;
- a sniffer on the path: with TLS on the coordinator the port speaks TLS with its certificate.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.config import BulkSettings, CoordinatorConfig
from coordinator.errors import QuotaExceeded
from tensorgrid import tls
from tensorgrid.blobs import BlobStore
from tensorgrid.blobs.bulk import DIGEST_BYTES, MAGIC, TOKEN_BYTES, recv_chunks, recv_exact, send_from, write_line
from tensorgrid.blobs.overlap import write_behind_blocking
from tensorgrid.errors import BlobError, TensorGridError
from tensorgrid.tls import host_of
from tensorgrid.types import BlobRef
from tensorgrid.v1 import submit_pb2

log = logging.getLogger("tensorgrid.coordinator")

# record(submitter, ref, received) runs on the event loop once an upload is stored.
Record = Callable[[str, BlobRef, int], Coroutine[Any, Any, None]]
# moved(direction, path, bytes): "in"/"out", "bulk" (the metrics' counter).
Moved = Callable[[str, str, int], None]


def _unseen(direction: str, path: str, n: int) -> None:
    pass


@dataclass(frozen=True)
class Ticket:
    submitter: str
    upload: bool  # else a download
    size: int  # bytes the transfer carries
    expires_at_ms: int
    sha256: str = ""  # a download's blob
    offset: int = 0  # where a download starts


class Tickets:
    """The live tickets, by token; thread-safe (issued on the loop, taken on transfer threads)."""

    def __init__(self, ttl_ms: int, per_submitter: int) -> None:
        self.ttl_ms = ttl_ms
        self.per_submitter = per_submitter
        self._live: dict[bytes, Ticket] = {}
        self._lock = threading.Lock()

    def issue(
        self, submitter: str, *, upload: bool, size: int, sha256: str = "", offset: int = 0
    ) -> tuple[bytes, Ticket]:
        now = _now_ms()
        token = secrets.token_bytes(TOKEN_BYTES)
        ticket = Ticket(submitter, upload, size, now + self.ttl_ms, sha256, offset)
        with self._lock:
            self._drop_expired(now)
            if sum(t.submitter == submitter for t in self._live.values()) >= self.per_submitter:
                raise QuotaExceeded(
                    f"{self.per_submitter} bulk tickets are already open for you: use them or wait "
                    f"{self.ttl_ms // 1000} s for them to expire"
                )
            self._live[token] = ticket
        return token, ticket

    def take(self, token: bytes) -> Ticket | None:
        """The ticket of token, once: None if there is none or it expired."""
        with self._lock:
            ticket = self._live.pop(token, None)
        if ticket is None or ticket.expires_at_ms < _now_ms():
            return None
        return ticket

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def _drop_expired(self, now: int) -> None:
        for token in [t for t, ticket in self._live.items() if ticket.expires_at_ms < now]:
            del self._live[token]


class BulkPort:
    """The listening socket, its accept thread and the transfers it runs."""

    def __init__(
        self,
        settings: BulkSettings,
        blobs: BlobStore,
        record: Record,
        tls: ssl.SSLContext | None,
        moved: Moved = _unseen,
    ) -> None:
        self.settings = settings
        self.blobs = blobs
        self.record = record
        self.moved = moved
        self.tls = tls
        self.tickets = Tickets(settings.ticket_ttl_ms, settings.tickets_per_submitter)
        self.port = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}  # transfers per peer address
        self._pool = ThreadPoolExecutor(settings.max_transfers, thread_name_prefix="bulk")
        self._closed = threading.Event()

    def issue(
        self, submitter: str, *, upload: bool, size: int, sha256: str = "", offset: int = 0
    ) -> submit_pb2.BulkTicket:
        """A ticket for one transfer on this port (the caller has made the checks)."""
        token, ticket = self.tickets.issue(submitter, upload=upload, size=size, sha256=sha256, offset=offset)
        return submit_pb2.BulkTicket(port=self.port, token=token, size=ticket.size, expires_at_ms=ticket.expires_at_ms)

    def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port) and return the port; transfers that finish call
        record() on the running event loop."""
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        self._sock = sock
        self.port = sock.getsockname()[1]
        threading.Thread(target=self._accept_loop, name="bulk-accept", daemon=True).start()
        return self.port

    def stop(self) -> None:
        self._closed.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, peer = self._sock.accept()
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.05)  # out of descriptors: back off
                continue
            ip = str(peer[0])
            if not self._admit(ip):
                self._refuse(conn, "too many bulk transfers at once: retry shortly, or use gRPC")
                continue
            try:
                self._pool.submit(self._serve, conn, ip)
            except RuntimeError:  # shut down
                self._release(ip)
                conn.close()
                return

    def _admit(self, ip: str) -> bool:
        with self._lock:
            if sum(self._active.values()) >= self.settings.max_transfers:
                return False
            if self._active.get(ip, 0) >= self.settings.per_ip:
                return False
            self._active[ip] = self._active.get(ip, 0) + 1
            return True

    def _release(self, ip: str) -> None:
        with self._lock:
            self._active[ip] -= 1
            if not self._active[ip]:
                del self._active[ip]

    def _refuse(self, conn: socket.socket, why: str) -> None:
        try:
            conn.settimeout(1.0)
            write_line(conn, {"error": why})
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket, ip: str) -> None:
        sock: socket.socket = conn
        try:
            conn.settimeout(self.settings.hello_timeout_s)
            if self.tls is not None:
                sock = self.tls.wrap_socket(conn, server_side=True)
            hello = recv_exact(sock, len(MAGIC) + TOKEN_BYTES, "the greeting")
            ticket = self.tickets.take(hello[len(MAGIC) :]) if hello.startswith(MAGIC) else None
            if ticket is None:
                write_line(sock, {"error": "unknown or expired ticket: ask SubmitterService for a new one"})
                return
            sock.settimeout(self.settings.idle_timeout_s)
            if ticket.upload:
                self._receive(sock, ticket)
            else:
                self._send(sock, ticket)
        except (OSError, BlobError, TensorGridError) as e:
            log.info("bulk transfer from %s ended: %s", ip, e)
        except Exception:
            log.exception("bulk transfer from %s failed", ip)
        finally:
            sock.close()
            self._release(ip)

    def _receive(self, sock: socket.socket, ticket: Ticket) -> None:
        writer = self.blobs.writer(None, size=ticket.size)
        try:
            write_line(sock, {"size": ticket.size})
            write_behind_blocking(recv_chunks(sock, ticket.size), writer.write)
            digest = recv_exact(sock, DIGEST_BYTES, "the digest")
            writer.expect(BlobRef(digest.hex(), ticket.size))
            ref = writer.commit()
        except BlobError as e:  # a hash mismatch among them: say so, store nothing
            _try_line(sock, {"error": str(e)})
            raise
        except TimeoutError:
            _try_line(sock, {"error": f"no bytes for {self.settings.idle_timeout_s:g} s: transfer dropped"})
            raise
        finally:
            writer.abort()
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self.record(ticket.submitter, ref, ticket.size), self._loop).result(60)
        self.moved("in", "bulk", ref.size)
        log.info("stored blob %s (%d bytes, bulk) for %s", ref.sha256, ref.size, ticket.submitter)
        write_line(sock, {"sha256": ref.sha256, "size": ref.size})

    def _send(self, sock: socket.socket, ticket: Ticket) -> None:
        path: Path = self.blobs.path_for(ticket.sha256)
        try:
            f = open(path, "rb")  # noqa: SIM115 -- closed below
        except OSError:
            write_line(sock, {"error": f"blob {ticket.sha256} is no longer stored"})
            return
        with f:
            write_line(sock, {"size": ticket.size})
            for _ in send_from(sock, f, ticket.offset, ticket.size):
                pass
        self.moved("out", "bulk", ticket.size)


def open_bulk_port(
    config: CoordinatorConfig, blobs: BlobStore, record: Record, moved: Moved = _unseen
) -> BulkPort | None:
    """Start the bulk port config.bulk asks for (None when it is off), under the TLS rule of
    gRPC (tensorgrid.tls): TLS with the coordinator's certificate, plain text only where gRPC
    may serve it. Call on the event loop."""
    settings = config.bulk
    if not settings.enabled:
        return None
    listen = settings.listen or f"{host_of(config.listen)}:0"
    secure = tls.check_listen(listen, config.tls_cert, config.tls_key, config.insecure)
    context = None
    if secure:
        assert config.tls_cert is not None and config.tls_key is not None
        context = tls.server_context(config.tls_cert, config.tls_key)
    port = BulkPort(settings, blobs, record, context, moved)
    host, _, number = listen.rpartition(":")
    try:
        port.start(host.strip("[]"), int(number))
    except ValueError:
        raise TensorGridError(f"--bulk-listen {listen!r} is not HOST:PORT or off") from None
    log.info("bulk port %s:%d (%s)", host, port.port, "TLS" if secure else "plain text")
    return port


def _try_line(sock: socket.socket, line: dict[str, Any]) -> None:
    try:
        write_line(sock, line)
    except OSError:
        pass


def _now_ms() -> int:
    return int(time.time() * 1000)
