"""Bulk transfer: a blob's bytes over a plain TCP (or TLS) connection beside gRPC.

gRPC moves a blob as 1 MiB protobuf messages, and each message is copied two or three times
on its way through protobuf and gRPC's core: a stream carries about a quarter of what the same
socket carries raw. So a large blob may instead go over the coordinator's bulk port, where the
bytes are the only thing on the wire and a sender can sendfile() them straight from the page
cache.

Nothing is decided on the bulk port. The submitter first asks for a ticket over its gRPC
session (SubmitterService.OpenBulkUpload / OpenBulkDownload), where the coordinator makes the
very checks UploadBlob and DownloadBlob make (quota; who may read the blob; a withheld result).
The ticket names the port and carries a one-time 32-byte token bound to that submitter, that
blob and that size, good for a few seconds. The conversation on the port:

    client: MAGIC, token                         (36 bytes)
    server: one JSON line: {"size": N} to go on, {"error": "..."} and close
    upload:   client: N bytes, then the 32-byte sha256 of them
              server: one JSON line: {"sha256": ..., "size": N} once stored, or {"error": ...}
    download: server: N bytes (the blob from the ticket's offset), then closes

The server stores uploaded bytes only if they hash to the digest that follows them; the client
checks a download's hash itself (tensorgrid.blobs.download). With TLS on the coordinator the bulk
port speaks TLS with the same certificate, verified as the gRPC channel is.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from tensorgrid.blobs.store import CHUNK_BYTES
from tensorgrid.errors import BlobError

MAGIC = b"TGB1"
TOKEN_BYTES = 32
DIGEST_BYTES = 32
MAX_LINE = 4096
SEND_SLICE = 8 * CHUNK_BYTES  # sendfile() in slices this big, so progress can be shown


class BulkRefused(BlobError):
    """The bulk port refused the transfer (its JSON error line says why)."""


def read_line(sock: socket.socket) -> dict[str, Any]:
    """One JSON object terminated by a newline, at most MAX_LINE bytes; BlobError otherwise."""
    data = bytearray()
    while not data.endswith(b"\n"):
        if len(data) >= MAX_LINE:
            raise BlobError("bulk peer sent an over-long line")
        piece = sock.recv(1)
        if not piece:
            raise BlobError("bulk connection closed before its status line")
        data += piece
    try:
        line = json.loads(data)
    except ValueError:
        raise BlobError(f"bulk peer sent a malformed status line: {bytes(data[:80])!r}") from None
    if not isinstance(line, dict):
        raise BlobError("bulk peer sent a status line that is not an object")
    return line


def write_line(sock: socket.socket, line: dict[str, Any]) -> None:
    sock.sendall(json.dumps(line, separators=(",", ":")).encode() + b"\n")


def recv_exact(sock: socket.socket, n: int, what: str) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise BlobError(f"bulk connection closed after {got} of the {n} bytes of {what}")
        got += k
    return bytes(buf)


def recv_chunks(sock: socket.socket, n: int) -> Iterator[bytearray]:
    """Exactly n bytes from sock, in full CHUNK_BYTES pieces (the last may be shorter)."""
    done = 0
    while done < n:
        buf = bytearray(min(CHUNK_BYTES, n - done))
        view = memoryview(buf)
        got = 0
        while got < len(buf):
            k = sock.recv_into(view[got:])
            if k == 0:
                raise BlobError(f"bulk connection closed after {done + got} of {n} bytes")
            got += k
        done += got
        yield buf


def expect_go(sock: socket.socket) -> int:
    """The server's first line: the byte count to transfer, or BulkRefused."""
    line = read_line(sock)
    if "error" in line:
        raise BulkRefused(f"bulk port refused the transfer: {line['error']}")
    size = line.get("size")
    if not isinstance(size, int) or size < 0:
        raise BlobError(f"bulk port sent a bad status line: {line}")
    return size


def connect(host: str, port: int, tls: ssl.SSLContext | None, timeout: float) -> socket.socket:
    """A connection to the bulk port, TLS-wrapped (verifying host) when tls is given."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            return tls.wrap_socket(sock, server_hostname=host)
        return sock
    except BaseException:
        sock.close()
        raise


def client_context(ca_cert: Path | None) -> ssl.SSLContext:
    """Verifies the bulk port's certificate as the gRPC channel does (ca_cert, else the system's roots)."""
    return ssl.create_default_context(cafile=str(ca_cert) if ca_cert is not None else None)


def send_file(
    sock: socket.socket,
    token: bytes,
    path: Path,
    size: int,
    digest: Callable[[], bytes],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Upload path's first `size` bytes over sock; digest() gives their sha256 once they are sent
    (the caller hashes them meanwhile). Returns the server's final line ({"sha256", "size"})."""
    sock.sendall(MAGIC + token)
    if expect_go(sock) != size:
        raise BlobError("bulk port expects a different size than the ticket's")
    with open(path, "rb") as f:
        for sent in send_from(sock, f, 0, size):
            if progress:
                progress(sent, size)
    sock.sendall(digest())
    line = read_line(sock)
    if "error" in line:
        raise BulkRefused(f"the coordinator did not store the upload: {line['error']}")
    return line


def send_from(sock: socket.socket, f: BinaryIO, offset: int, count: int) -> Iterator[int]:
    """Send count bytes of f from offset; yields the bytes sent so far after each slice.

    Plain sockets sendfile() (the kernel copies from the page cache); a TLS socket must encrypt
    in user space, where Python's sendfile() fallback would send 8 KiB at a time: it gets
    CHUNK_BYTES per sendall() instead."""
    sent = 0
    tls = isinstance(sock, ssl.SSLSocket)
    if tls:
        f.seek(offset)
    while sent < count:
        n = min(CHUNK_BYTES if tls else SEND_SLICE, count - sent)
        if tls:
            data = f.read(n)
            sock.sendall(data)
            n = len(data)
        else:
            n = sock.sendfile(f, offset + sent, n)
        if n == 0:
            raise BlobError(f"the file shrank while it was being sent ({sent} of {count} bytes)")
        sent += n
        yield sent


def receive(sock: socket.socket, token: bytes, size: int) -> Iterator[bytearray]:
    """Download: the ticket's `size` bytes in chunks, after the server's go-ahead."""
    sock.sendall(MAGIC + token)
    if expect_go(sock) != size:
        raise BlobError("bulk port would send a different size than the ticket's")
    yield from recv_chunks(sock, size)
