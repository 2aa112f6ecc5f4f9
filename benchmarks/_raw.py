"""Baselines measured in the same run as our system: a raw grpc.aio echo and raw TCP.

Run as a process (`python -m benchmarks._raw echo|tcp-sink|tcp-source …`) so the baseline
server lives in its own process, just as the coordinator does. With `--tls-cert C --tls-key K`
each serves over TLS (the same certificate the coordinator is given), for the TLS run's baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import socket
import ssl
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import grpc

from tensorgrid.rpc import server_options
from tensorgrid.tls import server_context, server_credentials

ECHO_METHOD = "/bench.Echo/Echo"


def _identity(b: bytes) -> bytes:
    return b


async def serve_echo(port_file: Path, tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
    """An echo server, over TLS with tls_cert/tls_key (the same credentials the coordinator builds)."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server = grpc.aio.server(options=server_options())
    server.add_generic_rpc_handlers((handler,))
    if tls_cert is not None and tls_key is not None:
        port = server.add_secure_port("127.0.0.1:0", server_credentials(tls_cert, tls_key))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


def tcp_sink(port_file: Path, out: Path, tls: ssl.SSLContext | None = None) -> None:
    """Accept connections; write each one's bytes to a new file, as a blob store does, hashing them
    with sha256 as they arrive when the first byte sent is b"h" (b"c": copy only). Reply with the
    byte count and hex digest once all is written."""
    srv = socket.create_server(("127.0.0.1", 0))
    port_file.write_text(str(srv.getsockname()[1]))
    n = 0
    while True:
        conn, _ = srv.accept()
        if tls is not None:
            conn = tls.wrap_socket(conn, server_side=True)
        n += 1
        with conn, open(out.with_name(f"{out.name}.{n}"), "wb") as f:
            head = read_up_to(conn, 9)  # b"h" or b"c", then the byte count (a TLS sender cannot half-close)
            total, digest = receive(conn, f, hashed=head[:1] == b"h", size=int.from_bytes(head[1:], "big"))
            conn.sendall(f"{total} {digest}".encode())


def receive(conn: socket.socket, f: BinaryIO, hashed: bool, size: int | None = None) -> tuple[int, str]:
    """Read conn to its end (or `size` bytes) into f in 1 MiB reads; returns (bytes, sha256 hex or "").

    hashed: sha256 and the file write run on a worker thread one read behind the socket (both
    release the GIL), so hashing overlaps receiving, as our own receivers do; a plain serial
    loop would make the baseline slower than a competent raw receiver."""
    left = size if size is not None else 1 << 62
    total = 0
    if not hashed:
        while data := read_up_to(conn, min(1 << 20, left - total)):
            f.write(data)
            total += len(data)
        return total, ""
    h = hashlib.sha256()

    def store(data: bytes | bytearray) -> None:
        h.update(data)
        f.write(data)

    pending: Future[None] | None = None
    with ThreadPoolExecutor(1) as pool:
        while data := read_up_to(conn, min(1 << 20, left - total)):
            if pending is not None:
                pending.result()
            pending = pool.submit(store, data)
            total += len(data)
        if pending is not None:
            pending.result()
    return total, h.hexdigest()


def read_up_to(conn: socket.socket, n: int) -> bytearray:
    """Up to n bytes: fewer only at the end of the stream. A TLS socket hands out one 16 KiB
    record per recv(); filling whole 1 MiB reads keeps the worker-thread handoffs as few as on
    plain TCP."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = conn.recv_into(view[got:])
        if k == 0:
            break
        got += k
    view.release()
    return buf if got == n else buf[:got]


def send_all(conn: socket.socket, f: BinaryIO) -> None:
    """The file to conn: sendfile() on plain TCP; on TLS 1 MiB sendall()s (Python's sendfile()
    fallback for TLS sends 8 KiB at a time)."""
    if not isinstance(conn, ssl.SSLSocket):
        conn.sendfile(f)
        return
    while data := f.read(1 << 20):
        conn.sendall(data)


def tcp_source(port_file: Path, src: Path, tls: ssl.SSLContext | None = None) -> None:
    """Accept connections; send `src` to each one."""
    srv = socket.create_server(("127.0.0.1", 0))
    port_file.write_text(str(srv.getsockname()[1]))
    while True:
        conn, _ = srv.accept()
        if tls is not None:
            conn = tls.wrap_socket(conn, server_side=True)
        with conn, open(src, "rb") as f:
            send_all(conn, f)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("echo", "tcp-sink", "tcp-source"))
    p.add_argument("--port-file", type=Path, required=True)
    p.add_argument("--path", type=Path)
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    ns = p.parse_args()
    tls = server_context(ns.tls_cert, ns.tls_key) if ns.tls_cert is not None and ns.tls_key is not None else None
    if ns.mode == "echo":
        asyncio.run(serve_echo(ns.port_file, ns.tls_cert, ns.tls_key))
    elif ns.mode == "tcp-sink":
        tcp_sink(ns.port_file, ns.path, tls)
    else:
        tcp_source(ns.port_file, ns.path, tls)


if __name__ == "__main__":
    main()
