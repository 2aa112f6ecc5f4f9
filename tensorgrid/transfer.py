"""Moving blobs between a submitter and its coordinator: over the bulk port when it has one
(tensorgrid.blobs.bulk), else as gRPC streams; hashed as they go, resumable downloads."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from tensorgrid.blobs import CHUNK_BYTES, bulk, download, file_sha256
from tensorgrid.errors import BlobError, HashMismatch, TensorGridError
from tensorgrid.session import CoordinatorError, Metadata, Session
from tensorgrid.tls import ClientTls, host_of
from tensorgrid.types import BlobRef
from tensorgrid.v1 import common_pb2, submit_pb2, submit_pb2_grpc

log = logging.getLogger("tensorgrid.client")
Progress = Callable[[int, int], None]  # (bytes done, bytes total)
BULK_MODES = ("auto", "off", "only")
BULK_MIN_BYTES = CHUNK_BYTES  # smaller blobs go over gRPC in "auto" (a ticket costs a round trip)
_NO_BULK = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED)


def _upload_chunks(
    path: Path, size: int, hashed: Future[BlobRef], progress: Progress | None
) -> Iterator[submit_pb2.UploadChunk]:
    """UploadBlob's messages: a header with the size, the bytes, and the sha256 once `hashed` has it."""
    yield submit_pb2.UploadChunk(header=submit_pb2.UploadHeader(size=size))
    announced = False
    done = 0
    with open(path, "rb") as f:
        while data := f.read(CHUNK_BYTES):
            yield submit_pb2.UploadChunk(data=data)
            done += len(data)
            if progress:
                progress(done, size)
            if not announced and hashed.done():
                announced = True
                yield _hash_header(hashed.result())
    if not announced:
        yield _hash_header(hashed.result())  # waits for the hashing thread


def _hash_header(ref: BlobRef) -> submit_pb2.UploadChunk:
    return submit_pb2.UploadChunk(header=submit_pb2.UploadHeader(sha256=ref.sha256, size=ref.size))


class Transfer:
    """Uploads and downloads for one client (its stub, session, address and TLS)."""

    def __init__(
        self,
        stub: submit_pb2_grpc.SubmitterServiceStub,
        session: Session,
        target: Callable[[], str],
        tls: ClientTls,
        bulk: str,
        timeout: float,
    ) -> None:
        if bulk not in BULK_MODES:
            raise TensorGridError(f"bulk must be one of {', '.join(BULK_MODES)}, not {bulk!r}")
        self.stub = stub
        self.session = session
        self._target = target  # the replica the client talks to now (its bulk port is that host's)
        self.tls = tls
        self.bulk = bulk
        self.timeout = timeout

    def upload(self, path: str | os.PathLike[str], progress: Progress | None = None) -> BlobRef:
        """Stream a file to the coordinator; returns its BlobRef. Skips bytes the coordinator has.

        The file is hashed while it streams (this thread hashes, gRPC's sends): the header gives
        the size, and the sha256 follows as soon as it is known. The coordinator keeps the bytes
        only if they match it, and stops the upload early if it already has that blob.
        progress is called from gRPC's sending thread as chunks go out."""
        path = Path(path)
        if not path.is_file():
            raise BlobError(f"no such file: {path}")
        size = path.stat().st_size
        sent = self._upload_bulk(path, size, progress) if self._use_bulk(size) else None
        ref, got = sent or self.session.authed(lambda md: self._upload_once(path, size, progress, md))
        if got.sha256 != ref.sha256 or got.size != ref.size:
            raise HashMismatch(f"coordinator stored {got.sha256}, expected {ref.sha256}")
        if progress:
            progress(ref.size, ref.size)
        return ref

    def _upload_once(self, path: Path, size: int, progress: Progress | None, md: Metadata) -> tuple[BlobRef, Any]:
        hashed: Future[BlobRef] = Future()
        call = self.stub.UploadBlob.future(_upload_chunks(path, size, hashed, progress), metadata=md, timeout=None)
        try:
            ref = file_sha256(path)
        except BaseException as e:
            hashed.set_exception(e)
            call.cancel()
            raise
        hashed.set_result(ref)
        return ref, call.result()

    def _upload_bulk(self, path: Path, size: int, progress: Progress | None) -> tuple[BlobRef, Any] | None:
        """Upload over the bulk port, hashing the file on a thread while sendfile() sends it;
        None when there is no bulk port to use (and bulk is "auto")."""
        ticket = self._bulk_ticket(self.stub.OpenBulkUpload, submit_pb2.BulkUploadRequest(size=size))
        sock = None if ticket is None else self._bulk_connect(ticket)
        if ticket is None or sock is None:
            return None
        with sock, ThreadPoolExecutor(1, thread_name_prefix="blob-hash") as pool:
            hashed = pool.submit(file_sha256, path)
            line = bulk.send_file(
                sock, ticket.token, path, size, lambda: bytes.fromhex(hashed.result().sha256), progress
            )
        return hashed.result(), BlobRef(str(line.get("sha256")), int(line.get("size", -1)))

    def _use_bulk(self, size: int) -> bool:
        return self.bulk == "only" or (self.bulk == "auto" and size >= BULK_MIN_BYTES)

    def _bulk_ticket(self, method: Any, request: Any) -> submit_pb2.BulkTicket | None:
        """A ticket for the bulk port; None if the coordinator has none (and bulk is "auto").

        "auto" also takes gRPC when a ticket is refused for the quota: UploadBlob lets an owner
        re-send a blob it already has whatever its quota (the hash, sent as it is known, proves it)."""
        try:
            return self.session.unary(method, request)  # type: ignore[no-any-return]
        except CoordinatorError as e:
            if self.bulk == "only" or e.code not in _NO_BULK:
                raise
            log.info("no bulk transfer (%s): using gRPC", e)
            return None

    def _bulk_connect(self, ticket: submit_pb2.BulkTicket) -> socket.socket | None:
        target = self._target()
        host = host_of(target)
        context = None if self.tls.plain_text(target) else bulk.client_context(self.tls.ca_cert)
        try:
            return bulk.connect(host, ticket.port, context, self.timeout)
        except OSError as e:
            if self.bulk == "only":
                raise BlobError(f"cannot reach the coordinator's bulk port {host}:{ticket.port}: {e}") from None
            log.warning("cannot reach the bulk port %s:%d (%s): using gRPC", host, ticket.port, e)
            return None

    def download(self, ref: BlobRef, dest: str | os.PathLike[str], progress: Progress | None = None) -> Path:
        """Stream a blob to dest, resuming a partial dest.part, and check its hash."""

        def attempt(md: Metadata) -> Path:
            def fetch(offset: int) -> Iterator[bytes | bytearray]:
                req = common_pb2.FetchBlobRequest(sha256=ref.sha256, offset=offset)
                if self._use_bulk(ref.size - offset):
                    ticket = self._bulk_ticket(self.stub.OpenBulkDownload, req)
                    sock = None if ticket is None else self._bulk_connect(ticket)
                    if ticket is not None and sock is not None:
                        with sock:
                            yield from bulk.receive(sock, ticket.token, ticket.size)
                        return
                for chunk in self.stub.DownloadBlob(req, metadata=md):
                    yield chunk.data

            return download(ref, Path(dest), fetch, progress)

        return self.session.authed(attempt)
