"""The submitter SDK's calls that follow a job: its events live (watch), its end (wait), its result,
and its record so far (events_now). A part of tensorgrid.client.Client (whose session, stub,
job and download they use)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import grpc

from tensorgrid import serde
from tensorgrid.backlog import backlog
from tensorgrid.errors import TensorGridError
from tensorgrid.retry import backoff
from tensorgrid.session import Metadata, Session, unauthenticated, wrap
from tensorgrid.transfer import Progress
from tensorgrid.types import BlobRef, JobEvent, JobInfo, JobState
from tensorgrid.v1 import submit_pb2, submit_pb2_grpc

# A live job's record (events_now): the longest wait for it, and the quiet that ends it on a
# coordinator that follows the job instead of ending the stream after its record.
RECORD_TIMEOUT_S = 30.0
RECORD_QUIET_S = 2.0


class _Client(Protocol):
    _stub: submit_pb2_grpc.SubmitterServiceStub
    session: Session

    def session_metadata(self) -> Metadata: ...
    def download(self, ref: BlobRef, dest: str | os.PathLike[str], progress: Progress | None = None) -> Path: ...
    def job(self, job_id: str) -> JobInfo: ...
    def watch(self, job_id: str, after_seq: int = 0) -> Iterator[JobEvent]: ...


class WatchCalls:
    def watch(self: _Client, job_id: str, after_seq: int = 0) -> Iterator[JobEvent]:
        """Events of a job from after_seq on, live, until it ends; reconnects if the stream drops."""
        seq = after_seq
        retries = 0
        renewed = False
        while True:
            try:
                req = submit_pb2.WatchJobRequest(job_id=job_id, after_seq=seq)
                for msg in self._stub.WatchJob(req, metadata=self.session_metadata()):
                    retries, renewed = 0, False
                    event = serde.event_from_pb(msg)
                    seq = event.seq
                    yield event
                return
            except grpc.RpcError as e:
                if unauthenticated(e) and not renewed:  # the session ended: open another, once
                    self.session.forget()
                    renewed = True
                    continue
                if e.code() != grpc.StatusCode.UNAVAILABLE or retries >= 30:  # type: ignore[attr-defined]
                    raise wrap(e) from None
                retries += 1
                time.sleep(backoff(retries, 0.4, cap=2.0))

    def wait(self: _Client, job_id: str) -> JobInfo:
        """Block until the job ends; returns its final state."""
        for _ in self.watch(job_id):
            pass
        return self.job(job_id)

    def result(
        self: _Client,
        job_id: str,
        dest: str | os.PathLike[str],
        progress: Progress | None = None,
        *,
        release_wait_s: float = 60.0,
    ) -> Path:
        """Download a finished job's result blob to dest.

        A priced job's result is released once its escrow lock is confirmed on chain: a job that
        succeeded before that is polled for up to release_wait_s (0: fail at once)."""
        job = self.job(job_id)
        deadline = time.monotonic() + release_wait_s
        while job.result is None and job.state == JobState.SUCCEEDED and time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            job = self.job(job_id)
        if job.result is None and job.state == JobState.SUCCEEDED:
            raise TensorGridError(
                f"job {job_id} succeeded; its result is released once its escrow is locked on chain: try again shortly"
            )
        if job.result is None:
            raise TensorGridError(
                f"job {job_id} has no result (it is {job.state.value}{': ' + job.error if job.error else ''})"
            )
        return self.download(job.result, dest, progress)

    def events_now(self: _Client, job_id: str, after_seq: int = 0) -> Iterator[JobEvent]:
        """A job's events already recorded, from after_seq on, without waiting for new ones. A
        live job's stream ends once the coordinator has sent its record (`recorded_only`); one from
        before that flag follows the job instead, so the record is also cut where the stream has
        been quiet for RECORD_QUIET_S."""
        job = self.job(job_id)
        if job.state.finished:
            yield from self.watch(job_id, after_seq)
            return
        req = submit_pb2.WatchJobRequest(job_id=job_id, after_seq=after_seq, recorded_only=True)
        call = self._stub.WatchJob(req, metadata=self.session_metadata(), timeout=RECORD_TIMEOUT_S)
        try:
            for msg in backlog(call, RECORD_QUIET_S):
                yield serde.event_from_pb(msg)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                raise wrap(e) from None
