"""Who may see what: jobs and blobs per submitter (and the operator), blobs per lease for nodes,
and each submitter's quotas.

A job or blob the caller may not see answers exactly as one that does not exist (NotFound,
same message): a stranger learns nothing about other submitters' work.
"""

from __future__ import annotations

from coordinator.config import Quotas
from coordinator.errors import NotFound, PermissionDenied, QuotaExceeded
from coordinator.repositories.store import Store
from coordinator.services.runtime import Runtime
from tensorgrid.blobs.store import EMPTY_SHA256
from tensorgrid.crypto import normalize_address
from tensorgrid.errors import SpecError
from tensorgrid.types import BlobRef, JobInfo


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class Access:
    def __init__(self, rt: Runtime, store: Store, quotas: Quotas, operator: str = "") -> None:
        self.rt = rt
        self.store = store
        self.repo = store.blob_access
        self.quotas = quotas
        self.operator = normalize_address(operator) if operator else ""

    def is_operator(self, address: str) -> bool:
        return bool(self.operator) and address == self.operator

    def sees_job(self, address: str, job: JobInfo) -> bool:
        return job.submitter == address or self.is_operator(address)

    async def job_for(self, address: str, job_id: str) -> JobInfo:
        """The job, if `address` may see it; NotFound (as for a job that does not exist) otherwise."""
        try:
            job = await self.rt.db(self.store.jobs.get_job, job_id)
        except NotFound:
            raise NotFound(f"no job {job_id} among your jobs") from None
        if not self.sees_job(address, job):
            raise NotFound(f"no job {job_id} among your jobs")
        return job

    def list_filter(self, address: str, asked: str) -> str:
        """The submitter whose jobs ListJobs returns: the caller's own unless the operator asks."""
        if self.is_operator(address):
            return normalize_address(asked) if asked else ""
        if asked and normalize_address(asked) != address:
            raise PermissionDenied("a submitter may list only its own jobs: leave `submitter` empty")
        return address

    async def check_submitter_read(self, address: str, sha256: str) -> None:
        if self.is_operator(address) or await self.rt.db(self.repo.submitter_may_read, address, sha256):
            return
        raise NotFound(f"no blob {sha256} among your uploads and jobs")

    async def check_node_read(self, node: str, sha256: str) -> None:
        """A node reads the blobs of the tasks it leases; the empty blob (every store holds it,
        it says nothing) is anyone's."""
        if sha256 == EMPTY_SHA256:
            return
        if not await self.rt.db(self.repo.node_may_read, node, sha256):
            raise PermissionDenied(f"this node holds no lease on a task that uses blob {sha256}")

    async def owns(self, address: str, sha256: str) -> bool:
        return await self.rt.db(self.repo.owns, address, sha256)

    async def check_upload(self, address: str, size: int) -> None:
        """QuotaExceeded unless `size` more bytes fit both the storage and today's upload quota."""
        stored, today = await self.rt.db(self.repo.usage, address, self.rt.now_ms())
        q = self.quotas
        if stored + size > q.stored_bytes:
            left = max(0, q.stored_bytes - stored)
            raise QuotaExceeded(
                f"storage quota: you store {_size(stored)} of {_size(q.stored_bytes)}; this blob is {_size(size)} "
                f"and {_size(left)} is left (unreferenced blobs expire after the coordinator's retention period)"
            )
        if today + size > q.daily_upload_bytes:
            left = max(0, q.daily_upload_bytes - today)
            raise QuotaExceeded(
                f"daily upload quota: you sent {_size(today)} of {_size(q.daily_upload_bytes)} today (UTC); "
                f"this blob is {_size(size)} and {_size(left)} is left until midnight UTC"
            )

    async def record_upload(self, address: str, ref: BlobRef, received: int) -> None:
        await self.rt.db(self.repo.record_upload, address, ref, received, self.rt.now_ms())

    async def check_spec_blobs(self, address: str, refs: list[BlobRef]) -> None:
        """A spec may name only blobs its submitter uploaded (else knowing a hash would let anyone
        make another's blob part of its own job, and download it)."""
        for ref in refs:
            if not await self.owns(address, ref.sha256):
                raise SpecError(f"blob {ref.sha256} is not among your uploads: upload it first")

    async def check_open_jobs(self, address: str) -> None:
        n = await self.rt.db(self.repo.open_jobs, address)
        if n >= self.quotas.open_jobs:
            raise QuotaExceeded(
                f"open jobs quota: you have {n} jobs queued or running, the limit is {self.quotas.open_jobs}; "
                f"wait for one to finish or cancel one"
            )
