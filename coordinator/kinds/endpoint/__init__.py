"""Endpoints: a model served on warm replicas (docs/SERVING.md; coordinator/services/serving).

An endpoint job has no tasks: its requests are routed in memory and paid in batches. Its row
exists for what every job shares (the submitter's signature, the escrow, access, its id),
and it stays running until its submitter deletes it (cancelled) — it is never assembled.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from coordinator.config import Limits
from coordinator.kinds.base import BaseKind, new_job
from coordinator.repositories.jobs import NewJob, NewTask
from coordinator.services.blobs import stored
from tensorgrid.blobs import BlobStore
from tensorgrid.spec import EndpointSpec
from tensorgrid.workloads.model import check_program

NAME = "endpoint"


class EndpointKind(BaseKind):
    name: str = NAME
    task_kinds: tuple[str, ...] = ()
    assembles: bool = False  # never complete: aggregation only tells it to look (after_accept)

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
        """The job row; no tasks. The model is vetted as inference and generation vet theirs."""
        assert isinstance(spec, EndpointSpec)
        check_program(stored(blobs, spec.model, "model"))
        job = new_job(spec, spec_json, submitter, sh, job_id, model=spec.model, settings=spec.replica_settings())
        return job, []

    def paid_tasks(self, spec: Any, planned: int) -> int:
        """The escrow holds reward_per_task_wei × max_requests (one paid result per request)."""
        return int(spec.max_requests)

    def after_accept(self, job_ids: Iterable[str]) -> None:
        return None  # an endpoint has no results to accept: nothing finishes it but a delete
