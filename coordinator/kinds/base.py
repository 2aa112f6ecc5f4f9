"""What most kinds share: the job row a spec becomes, and the do-nothing defaults of a kind."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from coordinator.repositories.jobs import NewJob
from coordinator.repositories.tasks import TaskRecord
from coordinator.services.kind import Effect
from tensorgrid.blobs import BlobStore
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import BlobRef, JobInfo, Receipt
from tensorgrid.workloads import tensorfile


class PaidLater:
    """Defaults of an accept effect (services/kind.Effect) whose result is paid later, if ever:
    it counts as its task's progress, asks for no reveal and wakes nobody."""

    pays_now: bool = False
    counts_progress: bool = True

    @property
    def reveal_steps(self) -> tuple[int, ...]:
        return ()

    def committed(self) -> None:
        return None


def concat_outputs(outputs: list[BlobRef], blobs: BlobStore) -> BlobRef:
    """One tensor file of the outputs' rows in the given order (streamed), stored as a blob."""
    tmp = blobs.temp_path("result-")
    try:
        tensorfile.concat([blobs.path_for(o.sha256) for o in outputs], tmp)
        return blobs.put_file(tmp)
    finally:
        os.unlink(tmp)


def new_job(
    spec: Any,
    spec_json: bytes,
    submitter: str,
    sh: str,
    job_id: str,
    *,
    model: BlobRef | None,
    settings: dict[str, Any] | str,
    verification_json: str = "",
    required_stake_wei: int = 0,
) -> NewJob:
    """The job row of a parsed spec (the fields every tensorgrid spec has)."""
    return NewJob(
        job_id=job_id,
        submitter=submitter,
        kind=spec.kind,
        spec_json=spec_json,
        spec_hash=sh,
        device=spec.device,
        min_memory_bytes=spec.min_memory_bytes,
        model=model,
        settings_json=settings if isinstance(settings, str) else json.dumps(settings, sort_keys=True),
        memory_limit_bytes=spec.task_memory_limit_bytes,
        time_limit_ms=spec.task_time_limit_s * 1000,
        max_attempts=spec.max_attempts,
        reward_per_task_wei=spec.reward_per_task_wei,
        verification_json=verification_json,
        required_stake_wei=required_stake_wei,
    )


class BaseKind:
    """Defaults: outputs are not inspected, results are paid on acceptance, the result is a manifest."""

    assembles: bool = True
    checks_output: bool = False
    reviews_claims: bool = False

    def vet(self, spec: Any, blobs: BlobStore) -> None:
        """Checks of a planned job that run its program (none by default)."""

    def vet_is_measured(self, spec: Any) -> bool:
        return False

    def paid_tasks(self, spec: Any, planned: int) -> int:
        """One paid result per planned task."""
        return planned

    def check_output(self, task: TaskRecord, receipt: Receipt, path: Path) -> int | None:
        return None

    async def examine(self, task: TaskRecord, node: str, output: BlobRef) -> Effect | None:
        return None

    async def still_wanted(self, task: TaskRecord, node: str, output_sha: str) -> tuple[int, ...]:
        return ()

    def assemble(self, outputs: list[BlobRef], blobs: BlobStore) -> BlobRef:
        """A manifest of the outputs' hashes, in task order."""
        return blobs.put_bytes(json.dumps([o.sha256 for o in outputs]).encode())

    def after_accept(self, job_ids: Iterable[str]) -> None:
        return None

    def detection(self, job: JobInfo, policy: VerificationSpec) -> float:
        return 0.0

    def audits(self, job: JobInfo) -> tuple[VerificationSpec, dict[str, int]] | None:
        return None
