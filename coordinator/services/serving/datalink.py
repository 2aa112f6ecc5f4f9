"""The coordinator's data port: replicas' requests straight to their warm workers.

tensorgrid.serving.datalink has the wire format and why it exists. A replica placed while the
port is on gets a token of its own in its ReplicaAssign (over its node's authenticated Serve
stream); its node may then open ONE connection here for it. Once it is up the replica's
requests go down that connection and their replies come up it; receipts, assignments, cancels
and replica states stay on the Serve stream. When it closes, what was sent on it fails over
(to another replica, or back to the Serve stream), so a node that never opens one, or loses
it, is served as before.

Who could abuse the port, and what stops them:
- a stranger with no token: it must send a hello within hello_timeout_s or is closed; at most
  max_pending connections wait for a hello at once (more are closed at once);
- a forged hello (a replica id with a MAC under a guessed token): refused and closed;
- a replayed hello (recorded off the wire): the MAC covers a nonce drawn fresh for each
  connection, so an old hello matches no new one;
- a second connection for a replica that has one: refused (one connection per replica);
- a frame past max_frame_bytes: the connection is closed unread (its calls fail over);
- a worker answering a request its replica was never sent (another replica's, a forged id),
  or sending anything but replies: the connection is closed and the node's stream counts a
  protocol violation;
- more requests in flight than a replica's max_queue: the router never sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import socket

from google.protobuf.message import DecodeError

from coordinator.services.serving.links import Links
from coordinator.services.serving.model import Replica
from tensorgrid.serving import trace
from tensorgrid.serving.datalink import (
    ACCEPTED,
    HELLO_BYTES,
    ID_BYTES,
    MAGIC,
    NONCE_BYTES,
    DataLinkError,
    encode_frame,
    hello_mac,
    read_frame_async,
)
from tensorgrid.v1 import serving_pb2

__all__ = ["DataPort", "DataConn"]

log = logging.getLogger("tensorgrid.coordinator.serving")


class DataConn:
    """One replica's authenticated connection (model.DataPath)."""

    def __init__(self, replica: Replica, writer: asyncio.StreamWriter) -> None:
        self.replica = replica
        self.writer = writer
        self.closed = False

    def send(self, msg: serving_pb2.ServeDown) -> None:
        if not self.closed:
            if trace.enabled():
                for r in msg.requests:
                    trace.stamp("c.down", f"{r.replica_id[:8]}:{r.request_id}")
            self.writer.write(encode_frame(msg.SerializeToString()))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


class DataPort:
    """The listener: handshakes, one connection per replica, replies handed to the router."""

    def __init__(
        self, links: Links, *, max_frame_bytes: int, hello_timeout_s: float = 2.0, max_pending: int = 64
    ) -> None:
        self.links = links
        self.max_frame_bytes = max_frame_bytes
        self.hello_timeout_s = hello_timeout_s
        self.max_pending = max_pending
        self.pending = 0
        self.refused = 0  # connections closed before or at their hello
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._accept, host, port)
        bound: int = self.server.sockets[0].getsockname()[1]
        return bound

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def _replica(self, replica_id: str) -> Replica | None:
        for link in self.links.links.values():
            replica = link.replicas.get(replica_id)
            if replica is not None:
                return replica
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.pending >= self.max_pending:
            self.refused += 1
            writer.close()
            return
        self.pending += 1
        try:
            replica = await self._handshake(reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            replica = None
        finally:
            self.pending -= 1
        if replica is None:
            self.refused += 1
            writer.close()
            return
        conn = DataConn(replica, writer)
        replica.data = conn
        log.info("replica %s on %s: requests go down its data link", replica.replica_id[:12], replica.node)
        try:
            await self._read(conn, reader)
        except (DataLinkError, DecodeError, OSError, ValueError) as e:  # a worker's bytes: anything malformed
            log.warning("the data link of replica %s on %s closed: %s", replica.replica_id[:12], replica.node, e)
        finally:
            conn.close()
            if replica.data is conn:
                self.links.data_lost(replica)

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Replica | None:
        nonce = secrets.token_bytes(NONCE_BYTES)
        writer.write(MAGIC + nonce)
        async with asyncio.timeout(self.hello_timeout_s):
            got = await reader.readexactly(HELLO_BYTES)
        replica_id = got[:ID_BYTES].hex()
        replica = self._replica(replica_id)
        if replica is None or not replica.data_token:
            return None
        if not hmac.compare_digest(got[ID_BYTES:], hello_mac(replica.data_token, nonce, replica_id)):
            log.warning("a data link hello for replica %s did not verify", replica_id[:12])
            return None
        if replica.data is not None:
            log.warning("a second data link for replica %s refused", replica_id[:12])
            return None
        writer.write(ACCEPTED)
        with contextlib.suppress(OSError):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return replica

    async def _read(self, conn: DataConn, reader: asyncio.StreamReader) -> None:
        replica = conn.replica
        while not conn.closed:
            frame = await read_frame_async(reader, self.max_frame_bytes)
            if frame is None:
                return
            up = serving_pb2.ServeUp.FromString(frame)
            if up.WhichOneof("msg") is not None or up.receipts:
                raise DataLinkError("only replies come up a data link")
            for reply in up.replies:
                trace.stamp("c.up", f"{replica.replica_id[:8]}:{reply.request_id}")
                if conn.closed:
                    return
                if not self.links.on_data_reply(replica, reply):
                    self.links.violation(replica.link, f"a reply on replica {replica.replica_id[:12]}'s data link "
                                         f"to request {reply.request_id}, which it was never sent")  # fmt: skip
                    raise DataLinkError(f"a reply to request {reply.request_id}, not this replica's")
