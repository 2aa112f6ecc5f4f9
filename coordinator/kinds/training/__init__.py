"""Training jobs (DiLoCo rounds): planned into round-0 shards, each result a pseudo-gradient
checked for shape and commitment, audited by checkpoint reveal and replay, and aggregated
round by round by the round manager, whose last round writes the job's result (the weights).
Two nodes' claims that a task cannot be run are reviewed by the referee running it (review.py); claims
that it needs more than its memory limit, by the referee measuring that run in parts (measure_training)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from coordinator.config import Limits
from coordinator.kinds.base import BaseKind
from coordinator.kinds.training.check import check_train_output
from coordinator.kinds.training.effects import OpenAudit
from coordinator.kinds.training.plan import plan_training
from coordinator.kinds.training.review import RAN, measure_training, review_training
from coordinator.kinds.training.vetting import probes_memory
from coordinator.repositories.jobs import NewJob, NewTask
from coordinator.repositories.store import Store
from coordinator.repositories.tasks import TaskRecord
from coordinator.repositories.training.audits import audit_counts
from coordinator.repositories.training.rounds import TASK_KIND
from coordinator.services.kind import Effect
from coordinator.services.runtime import Runtime
from coordinator.services.training.rounds import RoundManager
from coordinator.services.verification.manager import Verification
from coordinator.services.verification.policy import DEFAULT
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import SpecError
from tensorgrid.spec import TrainingSpec, VerificationSpec
from tensorgrid.types import BlobRef, JobInfo, Receipt


class TrainingKind(BaseKind):
    name: str = TASK_KIND
    checks_output: bool = True
    reviews_claims: bool = True  # the referee runs a contested task whole, as a node would (review.py)
    task_kinds: tuple[str, ...] = (TASK_KIND,)
    assembles: bool = False  # the round manager finishes the job when its last round closes

    def __init__(self, rt: Runtime, store: Store, blobs: BlobStore, verification: Verification) -> None:
        self.rt = rt
        self.engine = store.engine
        self.blobs = blobs
        secret = bytes.fromhex(store.meta_value("training_audit_secret", secrets.token_hex(32)))
        self.rounds = RoundManager(rt, store, blobs, secret)
        verification.add_review(TASK_KIND, review_training(rt, blobs), RAN)
        # a CPU node's out-of-memory report on one of its tasks is a claim the referee measures in parts
        # (repositories.limit_claims, "Over its memory limit"; services.verification.memory_parts)
        verification.add_measure(TASK_KIND, measure_training(rt, blobs), self.task_kinds)

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
        return plan_training(spec, spec_json, submitter, sh, job_id, self.rt, blobs, limits, measure=measure)

    def vet_is_measured(self, spec: Any) -> bool:
        """Plan runs the first inner step in a fresh measured child (vetting.probes_memory)."""
        return probes_memory(spec, self.rt)

    def paid_tasks(self, spec: Any, planned: int) -> int:
        """Every round's pseudo-gradients, not just round 0's planned tasks."""
        return int(spec.paid_tasks)

    def audits(self, job: JobInfo) -> tuple[VerificationSpec, dict[str, int]] | None:
        """The job's policy and its audits by outcome ("audit:passed", ...): training results are
        checked by the coordinator's replays, not by check tasks."""
        try:
            spec = TrainingSpec.parse(job.spec_json)
        except SpecError:
            return None
        counts = {"passed": 0, **audit_counts(self.engine, job.job_id)}  # "audit:" names them audits, even none
        return spec.verification or DEFAULT, {f"audit:{state}": n for state, n in counts.items()}

    def check_output(self, task: TaskRecord, receipt: Receipt, path: Path) -> int | None:
        check_train_output(self.engine, self.blobs, task.task_id, path, receipt.commitment)
        return None

    async def examine(self, task: TaskRecord, node: str, output: BlobRef) -> Effect | None:
        """Draw whether to audit the result; Rejected for a result of a round that has closed."""
        audits = self.rounds.audits
        plan = await audits.plan(task, node)
        if plan is None:
            return None
        return OpenAudit(plan, None if plan.steps else audits.starter(task.task_id, task.attempt))

    async def still_wanted(self, task: TaskRecord, node: str, output_sha: str) -> tuple[int, ...]:
        """The checkpoints the result's audit still waits for: the node reveals only what an
        answer names, so without them again the audit would hold its round open to the deadline."""
        return await self.rounds.audits.unrevealed(task.task_id, task.attempt, node, output_sha)

    def after_accept(self, job_ids: Iterable[str]) -> None:
        """A round may close now; the first call starts the round manager's loop."""
        self.rounds.poke(job_ids)
