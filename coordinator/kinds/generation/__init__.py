"""Generation jobs: prompts sharded into tasks, each node runs the decoding loop over its shard,
outputs concatenated in prompt order; results spot-checked like inference rows.

Each shard carries its prompts' sampling seeds (`seeds`: prompt i of the job has
prompt_seed(job seed, i), tensorgrid/workloads/prompts.py), so a check re-running a sample of a
shard's prompts on another node must give the same tokens (and log-probs within the float
tolerance). Neither the prompts' positions in the job nor the job's seed reach a node: a check's
prompts carry seeds like any shard's, not a telltale scatter of job indices. A check task runs as a
generation task (its settings name the task kind). The referee scores a check's claim with one
teacher-forced forward pass and decodes only when that does not settle it (replay.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from coordinator.config import Limits
from coordinator.errors import Rejected
from coordinator.events import EventHub
from coordinator.kinds.base import BaseKind, concat_outputs
from coordinator.kinds.generation.replay import measure_decoding, replay_generation, score_generation
from coordinator.kinds.generation.vetting import probes_memory, vet_generation
from coordinator.kinds.inference.checked import checked_job
from coordinator.kinds.inference.effects import OpenCheck, SettleCheck
from coordinator.repositories.jobs import NewJob, NewTask
from coordinator.repositories.tasks import TaskRecord
from coordinator.services.blobs import stored
from coordinator.services.kind import Effect
from coordinator.services.verification.decoys import carve
from coordinator.services.verification.manager import Verification
from coordinator.services.verification.policy import DEFAULT, VerificationPolicy
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import InvalidTensorFile, SpecError, TensorGridError
from tensorgrid.spec import GenerationSpec, VerificationSpec, parse_spec, task_id_for
from tensorgrid.spec.verification import decoy_plan, fee_tasks, shards_of
from tensorgrid.types import BlobRef, JobInfo, Receipt
from tensorgrid.workloads import tensorfile
from tensorgrid.workloads.arrays import array_of, load_arrays, save_arrays
from tensorgrid.workloads.model import check_program
from tensorgrid.workloads.prompts import check_prompts, job_seeds

NAME = "generation"
MAX_PROMPT_BYTES = 256 << 20  # the prompt file is read whole at intake to validate and shard it


class GenerationKind(BaseKind):
    name: str = NAME
    checks_output: bool = True
    reviews_claims: bool = True  # the referee runs its decoding loop (rulings), so it can run a disputed task
    task_kinds: tuple[str, ...] = (NAME,)  # its check tasks are the verification ladder's (see inference)

    def __init__(self, verification: Verification, hub: EventHub) -> None:
        self.verification = verification
        self.hub = hub
        rt, blobs = verification.rt, verification.blobs
        verification.add_replay(NAME, replay_generation(rt, blobs), score=score_generation(rt, blobs))
        # a CPU node's out-of-memory report on one of its tasks is a claim the referee measures
        # (repositories.limit_claims, "Over its memory limit"); its check tasks are measured as inference's
        # register them (CHECK_KIND), by their settings' task kind: this decoding loop
        verification.add_measure(NAME, measure_decoding(rt, blobs), self.task_kinds)

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
        decode = spec.decode_settings()
        del decode["seed"]  # in the shards' `seeds`: a task tells nothing of the job's seed
        settings = {
            "generation": decode,
            "device": spec.device,
            "task_kind": NAME,  # what its check tasks run as
        }
        job = checked_job(spec, spec_json, submitter, sh, job_id, settings, _policy(spec, len(tasks)), tasks, m)
        return job, tasks

    def vet(self, spec: Any, blobs: BlobStore) -> None:
        """Memory at intake (vetting.py): refuse a program that already needs more than its task's
        memory limit on the job's first prompts, or cannot decode them on CPU at all."""
        vet_generation(spec, self.verification.rt, blobs)

    def vet_is_measured(self, spec: Any) -> bool:
        """The first prompts are decoded in a fresh measured child (vetting.probes_memory)."""
        return probes_memory(spec, self.verification.rt)

    def paid_tasks(self, spec: Any, planned: int) -> int:
        """Each shard once, plus the verification fee that pays its checkers and decoys (fee_tasks);
        `planned` counts the decoys too (T + D tasks)."""
        shards = shards_of(spec.verification, planned, spec.shard_prompts)
        return shards + fee_tasks(spec.verification, shards, spec.shard_prompts)

    def check_output(self, task: TaskRecord, receipt: Receipt, path: Path) -> int | None:
        """The output's prompt count (it must be the task's). Raises Rejected."""
        try:
            header = tensorfile.read_header(path)
            if sorted(header.tensors) != ["lengths", "logprobs", "tokens"]:
                raise InvalidTensorFile(
                    f"a generation output holds tokens, logprobs and lengths, not {sorted(header.tensors)}"
                )
            return tensorfile.batch_rows(header)
        except TensorGridError as e:
            raise Rejected(f"output is not a valid generation result: {e}") from None

    async def examine(self, task: TaskRecord, node: str, output: BlobRef) -> Effect | None:
        """Open a spot-check of this result (a check's own result is settled by its task kind's owner)."""
        check, verdict = await self.verification.examine(task, node, output)
        if check is not None:
            return OpenCheck(check, self._wake)
        if verdict is not None:
            return SettleCheck(verdict, self._wake)
        return None

    def _wake(self) -> None:
        self.hub.work_available()
        self.verification.dispute_raised()

    def assemble(self, outputs: list[BlobRef], blobs: BlobStore) -> BlobRef:
        """Concatenate the output shards in prompt order, streaming."""
        return concat_outputs(outputs, blobs)

    def detection(self, job: JobInfo, policy: VerificationSpec) -> float:
        try:
            spec = parse_spec(job.spec_json)
        except SpecError:
            return 0.0
        if not isinstance(spec, GenerationSpec):
            return 0.0
        return VerificationPolicy(policy, job.tasks_total, spec.shard_prompts, spec.reward_per_task_wei).worst_detection


def _policy(spec: GenerationSpec, tasks: int) -> VerificationPolicy:
    return VerificationPolicy(spec.verification or DEFAULT, tasks, spec.shard_prompts, spec.reward_per_task_wei)


def _plan_shards(spec: GenerationSpec, job_id: str, blobs: BlobStore, limits: Limits) -> tuple[list[NewTask], int]:
    """The job's tasks in prompt order with decoys carved out (services/verification/decoys.py), and
    the prompts m of a check (and of a decoy). A shard holds its prompts' `tokens`, `lengths` and
    `seeds`; a check gathers rows of a shard, so it holds the same three."""
    check_program(stored(blobs, spec.model, "model"))
    if spec.prompts.size > MAX_PROMPT_BYTES:
        raise SpecError(f"the prompt file is {spec.prompts.size} bytes; the limit is {MAX_PROMPT_BYTES}")
    try:
        prompts = load_arrays(stored(blobs, spec.prompts, "prompts"))
        n = check_prompts(prompts, spec.vocab_size, submitted=True)
    except TensorGridError as e:
        raise SpecError(f"prompts: {e}") from None
    if n == 0:
        raise SpecError("the prompt file has zero prompts")
    shard_bytes = min(spec.shard_prompts, n) * (prompts["tokens"].shape[1] + 2) * 8
    if shard_bytes > limits.max_shard_bytes:
        raise SpecError(
            f"a shard of {spec.shard_prompts} prompts is {shard_bytes} bytes, over this coordinator's "
            f"limit of {limits.max_shard_bytes}: lower shard_prompts"
        )
    n_shards = -(-n // spec.shard_prompts)
    n_decoys, m = decoy_plan(spec.verification, n_shards, spec.shard_prompts)
    if n_shards + n_decoys > limits.max_tasks_per_job:
        raise SpecError(
            f"{n_shards} shards and {n_decoys} decoys is over the limit of {limits.max_tasks_per_job} tasks: "
            "raise shard_prompts (or lower verification.decoys)"
        )
    tokens, lengths = prompts["tokens"], prompts["lengths"]
    seeds = job_seeds(spec.seed, 0, n)
    tasks = []
    for index, piece in enumerate(carve(n, spec.shard_prompts, n_decoys, m)):
        start, end = piece.start, piece.end
        shard_lengths = lengths[start:end]
        shard = {
            "tokens": tokens[start:end, : int(shard_lengths.data.max())],
            "lengths": shard_lengths,
            "seeds": array_of(seeds[start:end]),
        }
        tmp = blobs.temp_path("shard-")
        try:
            save_arrays(shard, tmp)
            ref = blobs.put_file(tmp)
        finally:
            os.unlink(tmp)
        unit = spec.shard_prompts if piece.decoy else 0
        tasks.append(
            NewTask(index=index, task_id=task_id_for(job_id, index), input=ref, rows=end - start, decoy_unit_rows=unit)
        )
    return tasks, m
