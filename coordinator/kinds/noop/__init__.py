"""No-op jobs: N empty tasks, for measuring the grid's own overhead (dispatch, acceptance)."""

from __future__ import annotations

from typing import Any

from coordinator.config import Limits
from coordinator.kinds.base import BaseKind, new_job
from coordinator.repositories.jobs import NewJob, NewTask
from tensorgrid.blobs import EMPTY_SHA256, BlobStore
from tensorgrid.errors import SpecError
from tensorgrid.spec import task_id_for
from tensorgrid.types import BlobRef


class NoopKind(BaseKind):
    name: str = "noop"
    task_kinds: tuple[str, ...] = ("noop",)

    def plan(
        self,
        spec: Any,
        spec_json: bytes,
        submitter: str,
        sh: str,
        job_id: str,
        blobs: BlobStore,
        limits: Limits,
        *,
        measure: bool = True,
    ) -> tuple[NewJob, list[NewTask]]:
        if spec.tasks > limits.max_tasks_per_job:
            raise SpecError(f"{spec.tasks} tasks is over the limit of {limits.max_tasks_per_job}")
        empty = BlobRef(EMPTY_SHA256, 0)
        tasks = [NewTask(index=i, task_id=task_id_for(job_id, i), input=empty, rows=0) for i in range(spec.tasks)]
        return new_job(spec, spec_json, submitter, sh, job_id, model=None, settings={}), tasks
