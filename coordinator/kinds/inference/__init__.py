"""Inference jobs: input rows sharded along the batch dimension, each shard a task, outputs
concatenated in order; results spot-checked by re-running sampled rows on a drawn checker."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from coordinator.config import Limits
from coordinator.db.schema import CHECK_KIND
from coordinator.errors import Rejected
from coordinator.events import EventHub
from coordinator.kinds.base import BaseKind, concat_outputs
from coordinator.kinds.inference.checked import checked_job
from coordinator.kinds.inference.effects import OpenCheck, SettleCheck
from coordinator.kinds.inference.measure import measure_inference
from coordinator.kinds.inference.vetting import measures_memory, vet_inference
from coordinator.repositories.jobs import NewJob, NewTask
from coordinator.repositories.tasks import TaskRecord
from coordinator.repositories.verification.checks import CheckPlan
from coordinator.services.blobs import stored
from coordinator.services.kind import Effect
from coordinator.services.verification.decoys import carve
from coordinator.services.verification.manager import Verification
from coordinator.services.verification.policy import VerificationPolicy
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import SpecError, TensorGridError
from tensorgrid.spec import InferenceSpec, VerificationSpec, parse_spec
from tensorgrid.spec.verification import decoy_plan, fee_tasks, shards_of
from tensorgrid.types import BlobRef, JobInfo, Receipt
from tensorgrid.workloads import tensorfile
from tensorgrid.workloads.model import check_program


class InferenceKind(BaseKind):
    name: str = "inference"
    checks_output: bool = True
    reviews_claims: bool = True  # the referee re-runs its shards (rulings), so it can run a disputed one
    task_kinds: tuple[str, ...] = ("inference", CHECK_KIND)  # a check task re-runs rows of an inference task

    def __init__(self, verification: Verification, hub: EventHub) -> None:
        self.verification = verification
        self.hub = hub
        verification.foresight.add(self.name)  # its untrusted results are the referee's alone (examine)
        verification.canaries.add(self.name)  # an untrusted node's shard's canary is leased with it
        # a node's out-of-memory report on one of its tasks (or a check task) is a claim (repositories.claims)
        verification.add_measure(self.name, measure_inference(verification.rt, verification.blobs), self.task_kinds)

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
        tasks, m = _plan_shards(spec, job_id, blobs, limits)
        settings = {"input_names": list(spec.input_names) or None, "batch_size": spec.batch_size, "device": spec.device}
        policy = VerificationPolicy.for_job(spec, len(tasks))
        job = checked_job(spec, spec_json, submitter, sh, job_id, settings, policy, tasks, m)
        return job, tasks

    def paid_tasks(self, spec: Any, planned: int) -> int:
        """Each shard once, plus the verification fee that pays its checkers and decoys (fee_tasks);
        `planned` counts the decoys too (T + D tasks)."""
        shards = shards_of(spec.verification, planned, spec.shard_rows)
        return shards + fee_tasks(spec.verification, shards, spec.shard_rows)

    def vet(self, spec: Any, blobs: BlobStore) -> None:
        """The determinism contract (vetting.py): refuse a program whose rows are not independent,
        or that already needs more than its time or memory limit on the probe's rows."""
        if _vetted(spec):
            vet_inference(spec, self.verification.rt, blobs)

    def vet_is_measured(self, spec: Any) -> bool:
        """The probe runs in a fresh measured child (vetting.measures_memory)."""
        return _vetted(spec) and measures_memory(spec, self.verification.rt)

    def check_output(self, task: TaskRecord, receipt: Receipt, path: Path) -> int | None:
        """The output's row count (it must be the task's). Raises Rejected."""
        try:
            return tensorfile.batch_rows(tensorfile.read_header(path))
        except TensorGridError as e:
            raise Rejected(f"output is not a valid tensor file: {e}") from None

    async def examine(self, task: TaskRecord, node: str, output: BlobRef) -> Effect | None:
        """Rungs 2-4 of the ladder: open a spot-check of this result, or settle the check it answers."""
        # an untrusted node's result is re-run by the referee alone (no node runs its check)
        check, verdict = await self.verification.examine(task, node, output, referee_alone=True)
        if check is not None:
            return OpenCheck(check, lambda: self._opened(check))
        if verdict is not None:
            return SettleCheck(verdict, self._wake)
        return None

    def _opened(self, check: CheckPlan) -> None:
        self.hub.work_available()  # for its drawn checker
        self.verification.check_opened(check)  # the referee may re-run it meanwhile

    def _wake(self) -> None:
        self.hub.work_available()  # a check (or tiebreak) was opened for its drawn checker
        self.verification.dispute_raised()

    def assemble(self, outputs: list[BlobRef], blobs: BlobStore) -> BlobRef:
        """Concatenate the output shards in task order, streaming."""
        return concat_outputs(outputs, blobs)

    def detection(self, job: JobInfo, policy: VerificationSpec) -> float:
        """The policy's worst-case per-job detection (a node trusted enough to be checked at the floor rate)."""
        try:
            spec = parse_spec(job.spec_json)
        except SpecError:
            return 0.0
        if not isinstance(spec, InferenceSpec):
            return 0.0
        return VerificationPolicy(policy, job.tasks_total, spec.shard_rows, spec.reward_per_task_wei).worst_detection


def _vetted(spec: Any) -> bool:
    """Whether intake probes the job's program (a job verified by re-running its rows)."""
    return isinstance(spec, InferenceSpec) and (spec.verification or VerificationSpec()).mode != "none"


def _plan_shards(spec: InferenceSpec, job_id: str, blobs: BlobStore, limits: Limits) -> tuple[list[NewTask], int]:
    """The job's tasks in row order, decoys carved out of the shards (services/verification/decoys.py),
    and the rows m of a check (and of a decoy)."""
    check_program(stored(blobs, spec.model, "model"))
    src = stored(blobs, spec.inputs, "inputs")
    header = tensorfile.read_header(src)
    rows = tensorfile.batch_rows(header)
    missing = [n for n in spec.input_names if n not in header.tensors]
    if missing:
        raise SpecError(f"input_names {missing} are not in the input file (it has {sorted(header.tensors)})")
    if rows == 0:
        raise SpecError("the input file has zero rows")
    row_bytes = sum(t.row_bytes for t in header.tensors.values())
    shard_bytes = row_bytes * min(spec.shard_rows, rows)
    if shard_bytes > limits.max_shard_bytes:
        raise SpecError(
            f"a shard of {spec.shard_rows} rows is {shard_bytes} bytes, over this coordinator's limit of "
            f"{limits.max_shard_bytes}: lower shard_rows to at most {max(1, limits.max_shard_bytes // row_bytes)}"
        )
    n_shards = -(-rows // spec.shard_rows)
    n_decoys, m = decoy_plan(spec.verification, n_shards, spec.shard_rows)
    if n_shards + n_decoys > limits.max_tasks_per_job:
        raise SpecError(
            f"{n_shards} shards and {n_decoys} decoys is over the limit of {limits.max_tasks_per_job} tasks: "
            "raise shard_rows (or lower verification.decoys)"
        )
    tasks = []
    for index, piece in enumerate(carve(rows, spec.shard_rows, n_decoys, m)):
        tmp = blobs.temp_path("shard-")
        try:
            tensorfile.write_shard(src, header, piece.start, piece.end, tmp)
            ref = blobs.put_file(tmp)
        finally:
            os.unlink(tmp)
        # a random id: a node cannot tell a job's tasks from its check tasks by recomputing ids
        unit = spec.shard_rows if piece.decoy else 0
        task_id = secrets.token_hex(32)
        tasks.append(NewTask(index=index, task_id=task_id, input=ref, rows=piece.rows, decoy_unit_rows=unit))
    return tasks, m
