"""The bulk port over a real coordinator process: large blobs move beside gRPC, both ways, in
plain text and TLS; a coordinator without one falls back to gRPC; and every abuse of the port —
no ticket, a replayed ticket, short bytes, a wrong digest, a stalled greeting, another
submitter's blob, plain text to TLS — is refused with nothing stored."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tensorgrid.blobs import bulk, file_sha256
from tensorgrid.client import Client, CoordinatorError
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.v1 import common_pb2, submit_pb2

pytestmark = pytest.mark.integration
MiB = 1 << 20


def _blob(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def _stored(grid: LocalGrid) -> set[str]:
    """The blobs in the coordinator's store (temp files apart)."""
    root = grid.root / "coordinator" / "blobs"
    return {p.name for p in root.glob("??/*")}


def _temp_files(grid: LocalGrid) -> list[Path]:
    return list((grid.root / "coordinator" / "blobs" / "tmp").iterdir())


def _upload_ticket(client: Client, size: int) -> submit_pb2.BulkTicket:
    return client._unary(client._stub.OpenBulkUpload, submit_pb2.BulkUploadRequest(size=size))  # type: ignore[no-any-return]


def _dial(grid: LocalGrid, port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _wait_until_gone(grid: LocalGrid, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _temp_files(grid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _temp_files(grid) == []


def test_large_blobs_go_over_the_bulk_port_both_ways(make_grid: Callable[..., LocalGrid], tmp_path: Path) -> None:
    grid = make_grid()
    grid.start_coordinator()
    src = _blob(tmp_path / "big.bin", 5 * MiB + 123)
    seen: list[tuple[int, int]] = []
    with Client(grid.target, Signer.generate(), bulk="only") as client:
        ref = client.upload(src, progress=lambda done, total: seen.append((done, total)))
        assert ref == file_sha256(src)
        assert ref.sha256 in _stored(grid)
        assert seen[-1] == (ref.size, ref.size) and len(seen) > 1
        back = client.download(ref, tmp_path / "back.bin")
        assert back.read_bytes() == src.read_bytes()
        # a download resumes from its partial file over the bulk port too
        part = tmp_path / "again.bin.part"
        part.write_bytes(src.read_bytes()[: 2 * MiB])
        assert client.download(ref, tmp_path / "again.bin").read_bytes() == src.read_bytes()
    log = grid.procs[0].log_path.read_text()
    assert "bytes, bulk) for" in log and "bulk port 127.0.0.1:" in log


def test_without_a_bulk_port_blobs_go_over_grpc(make_grid: Callable[..., LocalGrid], tmp_path: Path) -> None:
    grid = make_grid("--bulk-listen", "off")
    grid.start_coordinator()
    src = _blob(tmp_path / "big.bin", 2 * MiB)
    with Client(grid.target, Signer.generate()) as client:  # "auto"
        ref = client.upload(src)
        assert client.download(ref, tmp_path / "back.bin").read_bytes() == src.read_bytes()
    with Client(grid.target, Signer.generate(), bulk="only") as strict, pytest.raises(CoordinatorError) as e:
        strict.upload(src)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "no bulk port" in str(e.value)


def test_the_bulk_port_refuses_every_abuse_and_stores_nothing(
    make_grid: Callable[..., LocalGrid], tmp_path: Path
) -> None:
    grid = make_grid("--bulk-hello-s", "1", "--bulk-idle-s", "2")
    grid.start_coordinator()
    data = os.urandom(2 * MiB)
    digest = hashlib.sha256(data).digest()
    with Client(grid.target, Signer.generate()) as client, Client(grid.target, Signer.generate()) as stranger:
        before = _stored(grid)
        ticket = _upload_ticket(client, len(data))

        # no ticket: a made-up token is refused before a byte is taken
        with _dial(grid, ticket.port) as s:
            s.sendall(bulk.MAGIC + os.urandom(bulk.TOKEN_BYTES))
            assert "unknown or expired ticket" in bulk.read_line(s)["error"]

        # the real ticket works once ...
        with _dial(grid, ticket.port) as s:
            s.sendall(bulk.MAGIC + ticket.token)
            assert bulk.read_line(s) == {"size": len(data)}
            s.sendall(data + digest)
            assert bulk.read_line(s) == {"sha256": digest.hex(), "size": len(data)}
        # ... and never again
        with _dial(grid, ticket.port) as s:
            s.sendall(bulk.MAGIC + ticket.token)
            assert "unknown or expired ticket" in bulk.read_line(s)["error"]
        assert _stored(grid) == before | {digest.hex()}
        before = _stored(grid)

        # bytes that do not match the digest that follows them are not stored
        other = os.urandom(len(data))
        ticket = _upload_ticket(client, len(other))
        with _dial(grid, ticket.port) as s:
            s.sendall(bulk.MAGIC + ticket.token)
            bulk.read_line(s)
            s.sendall(other + digest)
            assert "hash" in bulk.read_line(s)["error"]
        # a sender that stops short, then hangs up, leaves nothing
        ticket = _upload_ticket(client, len(other))
        with _dial(grid, ticket.port) as s:
            s.sendall(bulk.MAGIC + ticket.token)
            bulk.read_line(s)
            s.sendall(other[: MiB // 2])
        # a sender that stalls mid-transfer is dropped after --bulk-idle-s
        ticket = _upload_ticket(client, len(other))
        with _dial(grid, ticket.port) as s:
            s.sendall(bulk.MAGIC + ticket.token)
            bulk.read_line(s)
            s.sendall(other[: MiB // 2])
            started = time.monotonic()
            assert "transfer dropped" in bulk.read_line(s)["error"]
            assert time.monotonic() - started < 10
        _wait_until_gone(grid)
        assert _stored(grid) == before

        # a connection that never shows its ticket is closed after --bulk-hello-s
        with _dial(grid, ticket.port) as s:
            started = time.monotonic()
            assert s.recv(1) == b""
            assert time.monotonic() - started < 10

        # another submitter's blob: no ticket, exactly as for a blob that does not exist
        for who in (stranger, client):
            sha = digest.hex() if who is stranger else hashlib.sha256(b"nothing").hexdigest()
            with pytest.raises(CoordinatorError) as e:
                who._unary(who._stub.OpenBulkDownload, common_pb2.FetchBlobRequest(sha256=sha))
            assert e.value.code == grpc.StatusCode.NOT_FOUND

        # a blob the sender already owns needs no transfer; its hash alone is no proof for another
        owned = client._unary(
            client._stub.OpenBulkUpload, submit_pb2.BulkUploadRequest(size=len(data), sha256=digest.hex())
        )
        assert owned.stored.sha256 == digest.hex() and not owned.token
        theirs = _upload_ticket(stranger, len(data))
        assert theirs.token and not theirs.stored.sha256


def test_a_tls_coordinator_serves_its_bulk_port_over_tls(make_grid: Callable[..., LocalGrid], tmp_path: Path) -> None:
    grid = make_grid(tls=True)
    grid.start_coordinator()
    src = _blob(tmp_path / "big.bin", 3 * MiB)
    with grid.client(bulk="only") as client:
        ref = client.upload(src)
        assert client.download(ref, tmp_path / "back.bin").read_bytes() == src.read_bytes()
        ticket = _upload_ticket(client, 1)
    log = grid.procs[0].log_path.read_text()
    assert "bulk port 127.0.0.1:" in log and "(TLS)" in log
    # plain text to the TLS port: the handshake fails, no ticket is looked at
    with _dial(grid, ticket.port) as s:
        s.sendall(bulk.MAGIC + ticket.token)
        try:
            answer = s.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"{")
    # a client that trusts another CA refuses the port
    assert grid.ca_cert is not None
    wrong = ssl.create_default_context()
    with pytest.raises(ssl.SSLError), _dial(grid, ticket.port) as s:
        wrong.wrap_socket(s, server_hostname="127.0.0.1")
