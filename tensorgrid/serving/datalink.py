"""The data link: a replica's requests straight from the coordinator to its warm worker.

Without it a request crosses two more processes' wake-ups (coordinator → node agent's Serve
stream → the worker's pipe, and back). With it the agent opens one plain TCP connection to the
coordinator's data port per replica, proves it holds that replica's token, and hands the
connection to the sandboxed worker (which holds no key and has no network of its own: the
connection was made outside). The agent stays on the control path: the worker tells it each
micro-batch's digests and the agent signs the receipt, sent up the Serve stream as before.

Handshake (coordinator first, so a stranger learns nothing it could replay):

    coordinator → node:   MAGIC ‖ nonce (32 random bytes, fresh per connection)
    node → coordinator:   replica id (32 bytes) ‖ HMAC-SHA256(token, LABEL ‖ nonce ‖ replica id)
    coordinator → node:   b"\\x01" (accepted) — anything else, or a close, is a refusal

Then frames both ways: u32 big-endian length ‖ a protobuf message: ServeDown (requests only)
down, ServeUp (replies only) up. Nothing here imports torch or asyncio's loop policy: the
coordinator reads with asyncio, the worker with blocking sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
from typing import IO

__all__ = [
    "ACCEPTED",
    "DIRECT_BATCH_BASE",
    "ID_BYTES",
    "HELLO_BYTES",
    "MAGIC",
    "NONCE_BYTES",
    "DataLinkError",
    "encode_frame",
    "hello",
    "hello_mac",
    "open_link",
    "read_frame",
    "read_frame_async",
]

MAGIC = b"TGDL1\n"
NONCE_BYTES = 32
ID_BYTES = 32
HELLO_BYTES = ID_BYTES + 32
ACCEPTED = b"\x01"
LABEL = b"tensorgrid serving data link v1"
# Micro-batches the worker runs from its data link are numbered from here, so their receipts'
# task ids never meet those of the batches the agent feeds it through its pipe.
DIRECT_BATCH_BASE = 1 << 40


class DataLinkError(ConnectionError):
    """The other end broke the data link's protocol (or refused it)."""


def hello_mac(token: bytes, nonce: bytes, replica_id: str) -> bytes:
    return hmac.new(token, LABEL + nonce + bytes.fromhex(replica_id), hashlib.sha256).digest()


def hello(token: bytes, nonce: bytes, replica_id: str) -> bytes:
    """The node's answer to the port's nonce."""
    return bytes.fromhex(replica_id) + hello_mac(token, nonce, replica_id)


def encode_frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise DataLinkError(f"the data link closed ({len(data)} of {n} bytes)")
        data += chunk
    return bytes(data)


def open_link(host: str, port: int, replica_id: str, token: bytes, timeout_s: float = 5.0) -> socket.socket:
    """Connect to the coordinator's data port and authenticate for `replica_id` (blocking; the
    agent runs it on a thread). The connected socket, ready for frames (blocking mode)."""
    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        greeting = _recv_exactly(sock, len(MAGIC) + NONCE_BYTES)
        if not greeting.startswith(MAGIC):
            raise DataLinkError("not a TensorGrid data port")
        sock.sendall(hello(token, greeting[len(MAGIC) :], replica_id))
        if sock.recv(1) != ACCEPTED:
            raise DataLinkError("the data port refused this replica's hello")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def read_frame(stream: IO[bytes], max_bytes: int) -> bytes | None:
    """The next frame's payload from a blocking stream; None at a clean end."""
    prefix = stream.read(4)
    if not prefix:
        return None
    if len(prefix) != 4:
        raise DataLinkError("the data link closed inside a frame's length")
    n = int.from_bytes(prefix, "big")
    if n > max_bytes:
        raise DataLinkError(f"a frame of {n} bytes exceeds {max_bytes}")
    data = stream.read(n)
    if data is None or len(data) != n:
        raise DataLinkError("the data link closed inside a frame")
    return data


async def read_frame_async(reader: asyncio.StreamReader, max_bytes: int) -> bytes | None:
    """The next frame's payload; None at a clean end; DataLinkError past max_bytes."""
    try:
        prefix = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise DataLinkError("the data link closed inside a frame's length") from None
    n = int.from_bytes(prefix, "big")
    if n > max_bytes:
        raise DataLinkError(f"a frame of {n} bytes exceeds {max_bytes}")
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise DataLinkError("the data link closed inside a frame") from None
