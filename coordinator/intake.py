"""Job intake: check a signed spec, its blobs and its limits, then split it into tasks.

Runs on a worker thread (it reads and writes blob files). Everything a submitter can get
wrong is caught here, with a message that says what to change, before any node sees it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from coordinator.config import Limits
from coordinator.errors import PermissionDenied
from coordinator.storage import NewJob, NewTask
from coordinator.training import plan_training
from coordinator.verification.policy import VerificationPolicy
from tensorgrid.blobs import EMPTY_SHA256, BlobStore
from tensorgrid.crypto import normalize_address, recover_message_signer, submit_message
from tensorgrid.errors import BlobError, SignatureError, SpecError
from tensorgrid.spec import InferenceSpec, NoopSpec, job_id_for, parse_spec, spec_hash, task_id_for
from tensorgrid.training.spec import TrainingSpec
from tensorgrid.types import BlobRef
from tensorgrid.workloads import tensorfile
from tensorgrid.workloads.model import check_program

log = logging.getLogger("tensorgrid.coordinator")


def authenticate(spec_json: bytes, submitter: str, signature: bytes) -> tuple[str, str, str]:
    """Check the submitter's signature over the spec hash; returns (submitter, spec hash, job id)."""
    try:
        address = normalize_address(submitter)
        signer = recover_message_signer(submit_message(spec_hash(spec_json)), signature)
    except SignatureError as e:
        raise PermissionDenied(f"bad submit signature: {e}") from None
    if signer != address:
        raise PermissionDenied(f"the spec was signed by {signer}, not by the submitter {address}")
    sh = spec_hash(spec_json)
    return address, sh, job_id_for(address, sh)


def plan_job(
    spec_json: bytes, submitter: str, sh: str, job_id: str, blobs: BlobStore, limits: Limits
) -> tuple[NewJob, list[NewTask]]:
    """Validate the spec against the stored blobs and split it into tasks."""
    spec = parse_spec(spec_json)
    if isinstance(spec, TrainingSpec):
        return plan_training(spec, spec_json, submitter, sh, job_id, blobs, limits)
    policy_json, stake = "", 0
    if isinstance(spec, InferenceSpec):
        tasks = _plan_inference(spec, job_id, blobs, limits)
        model: BlobRef | None = spec.model
        settings = {"input_names": list(spec.input_names) or None, "batch_size": spec.batch_size, "device": spec.device}
        policy = VerificationPolicy.for_job(spec, len(tasks))
        if policy.enabled:
            policy_json, stake = json.dumps(asdict(policy.spec), sort_keys=True), policy.required_stake_wei
    else:
        tasks = _plan_noop(spec, job_id, limits)
        model, settings = None, {}
    job = NewJob(
        job_id=job_id,
        submitter=submitter,
        kind=spec.kind,
        spec_json=spec_json,
        spec_hash=sh,
        device=spec.device,
        min_memory_bytes=spec.min_memory_bytes,
        model=model,
        settings_json=json.dumps(settings, sort_keys=True),
        memory_limit_bytes=spec.task_memory_limit_bytes,
        time_limit_ms=spec.task_time_limit_s * 1000,
        max_attempts=spec.max_attempts,
        reward_per_task_wei=spec.reward_per_task_wei,
        verification_json=policy_json,
        required_stake_wei=stake,
    )
    return job, tasks


def _stored(blobs: BlobStore, ref: BlobRef, what: str) -> Path:
    try:
        have = blobs.ref(ref.sha256)
    except BlobError:
        raise SpecError(f"{what} blob {ref.sha256} is not on the coordinator: upload it first") from None
    if have.size != ref.size:
        raise SpecError(f"{what} blob {ref.sha256} has {have.size} bytes, the spec says {ref.size}")
    return blobs.path_for(ref.sha256)


def _plan_inference(spec: InferenceSpec, job_id: str, blobs: BlobStore, limits: Limits) -> list[NewTask]:
    check_program(_stored(blobs, spec.model, "model"))
    src = _stored(blobs, spec.inputs, "inputs")
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
    n_tasks = -(-rows // spec.shard_rows)
    if n_tasks > limits.max_tasks_per_job:
        raise SpecError(f"{n_tasks} shards is over the limit of {limits.max_tasks_per_job}: raise shard_rows")
    tasks = []
    for index, start in enumerate(range(0, rows, spec.shard_rows)):
        end = min(start + spec.shard_rows, rows)
        tmp = blobs.temp_path("shard-")
        try:
            tensorfile.write_shard(src, header, start, end, tmp)
            ref = blobs.put_file(tmp)
        finally:
            os.unlink(tmp)
        tasks.append(NewTask(index=index, task_id=task_id_for(job_id, index), input=ref, rows=end - start))
    return tasks


def _plan_noop(spec: NoopSpec, job_id: str, limits: Limits) -> list[NewTask]:
    if spec.tasks > limits.max_tasks_per_job:
        raise SpecError(f"{spec.tasks} tasks is over the limit of {limits.max_tasks_per_job}")
    empty = BlobRef(EMPTY_SHA256, 0)
    return [NewTask(index=i, task_id=task_id_for(job_id, i), input=empty, rows=0) for i in range(spec.tasks)]


__all__ = ["authenticate", "plan_job"]
