"""The one place where typed values meet protobuf messages."""

from __future__ import annotations

import json
from typing import overload

from tensorgrid import types as t
from tensorgrid.v1 import common_pb2, node_pb2, serving_pb2, submit_pb2

_ERROR_KINDS = {
    t.ErrorKind.INVALID_INPUT: common_pb2.ERROR_KIND_INVALID_INPUT,
    t.ErrorKind.UNSAFE_INPUT: common_pb2.ERROR_KIND_UNSAFE_INPUT,
    t.ErrorKind.OUT_OF_MEMORY: common_pb2.ERROR_KIND_OUT_OF_MEMORY,
    t.ErrorKind.TIMEOUT: common_pb2.ERROR_KIND_TIMEOUT,
    t.ErrorKind.EXECUTION: common_pb2.ERROR_KIND_EXECUTION,
    t.ErrorKind.BLOB_UNAVAILABLE: common_pb2.ERROR_KIND_BLOB_UNAVAILABLE,
    t.ErrorKind.CRASHED: common_pb2.ERROR_KIND_CRASHED,
    t.ErrorKind.RELEASED: common_pb2.ERROR_KIND_RELEASED,
    t.ErrorKind.PROGRAM_ERROR: common_pb2.ERROR_KIND_PROGRAM_ERROR,
}
_ERROR_KINDS_BACK = {v: k for k, v in _ERROR_KINDS.items()}

_JOB_STATES = {
    t.JobState.QUEUED: submit_pb2.JOB_STATE_QUEUED,
    t.JobState.RUNNING: submit_pb2.JOB_STATE_RUNNING,
    t.JobState.SUCCEEDED: submit_pb2.JOB_STATE_SUCCEEDED,
    t.JobState.FAILED: submit_pb2.JOB_STATE_FAILED,
    t.JobState.CANCELLED: submit_pb2.JOB_STATE_CANCELLED,
}
_JOB_STATES_BACK: dict[int, t.JobState] = {v: k for k, v in _JOB_STATES.items()}


@overload
def blob_to_pb(ref: t.BlobRef) -> common_pb2.BlobRef: ...
@overload
def blob_to_pb(ref: None) -> None: ...
def blob_to_pb(ref: t.BlobRef | None) -> common_pb2.BlobRef | None:
    return None if ref is None else common_pb2.BlobRef(sha256=ref.sha256, size=ref.size)


def blob_from_pb(msg: common_pb2.BlobRef) -> t.BlobRef | None:
    return t.BlobRef(msg.sha256, msg.size) if msg.sha256 else None


def error_to_pb(err: t.TaskError) -> common_pb2.TaskError:
    return common_pb2.TaskError(kind=_ERROR_KINDS[err.kind], message=err.message)


def error_from_pb(msg: common_pb2.TaskError) -> t.TaskError:
    kind = _ERROR_KINDS_BACK.get(msg.kind, t.ErrorKind.EXECUTION)
    return t.TaskError(kind, msg.message[:4000])


def caps_to_pb(c: t.Capabilities) -> node_pb2.Capabilities:
    return node_pb2.Capabilities(
        device_kind=c.device_kind,
        memory_bytes=c.memory_bytes,
        cpu_cores=c.cpu_cores,
        gpus=[node_pb2.Gpu(name=g.name, memory_bytes=g.memory_bytes) for g in c.gpus],
        max_concurrent=c.max_concurrent,
        torch_version=c.torch_version,
    )


def caps_from_pb(m: node_pb2.Capabilities) -> t.Capabilities:
    return t.Capabilities(
        device_kind=m.device_kind,
        memory_bytes=m.memory_bytes,
        cpu_cores=m.cpu_cores,
        gpus=tuple(t.Gpu(g.name, g.memory_bytes) for g in m.gpus),
        max_concurrent=max(1, m.max_concurrent),
        torch_version=m.torch_version,
    )


def domain_to_pb(d: t.Domain) -> node_pb2.Domain:
    return node_pb2.Domain(name=d.name, version=d.version, chain_id=d.chain_id, verifying_contract=d.verifying_contract)


def domain_from_pb(m: node_pb2.Domain) -> t.Domain:
    return t.Domain(m.name, m.version, m.chain_id, m.verifying_contract)


def lease_to_pb(lease: t.Lease) -> node_pb2.Lease:
    return node_pb2.Lease(
        job_id=lease.job_id,
        task_id=lease.task_id,
        attempt=lease.attempt,
        deadline_ms=lease.deadline_ms,
        kind=lease.kind,
        model=blob_to_pb(lease.model),
        input=blob_to_pb(lease.input),
        settings_json=json.dumps(lease.settings, sort_keys=True).encode() if lease.settings else b"{}",
        memory_limit_bytes=lease.memory_limit_bytes,
        time_limit_ms=lease.time_limit_ms,
    )


def lease_from_pb(m: node_pb2.Lease) -> t.Lease:
    input_ref = blob_from_pb(m.input)
    if input_ref is None:
        raise ValueError("lease without an input blob")
    return t.Lease(
        job_id=m.job_id,
        task_id=m.task_id,
        attempt=m.attempt,
        deadline_ms=m.deadline_ms,
        kind=m.kind,
        model=blob_from_pb(m.model) if m.HasField("model") else None,
        input=input_ref,
        settings=json.loads(m.settings_json or b"{}"),
        memory_limit_bytes=m.memory_limit_bytes,
        time_limit_ms=m.time_limit_ms,
    )


def receipt_to_pb(r: t.Receipt) -> common_pb2.Receipt:
    return common_pb2.Receipt(
        job_id=r.job_id,
        task_id=r.task_id,
        attempt=r.attempt,
        input_hash=r.input_hash,
        output_hash=r.output_hash,
        commitment=r.commitment,
        signature=r.signature,
    )


def receipt_from_pb(m: common_pb2.Receipt) -> t.Receipt:
    return t.Receipt(
        job_id=m.job_id,
        task_id=m.task_id,
        attempt=m.attempt,
        input_hash=m.input_hash,
        output_hash=m.output_hash,
        commitment=m.commitment,
        signature=bytes(m.signature),
    )


def job_state_to_pb(s: t.JobState) -> int:
    return _JOB_STATES[s]


def job_state_from_pb(v: int) -> t.JobState:
    return _JOB_STATES_BACK.get(v, t.JobState.QUEUED)


def job_to_pb(j: t.JobInfo) -> submit_pb2.Job:
    return submit_pb2.Job(
        job_id=j.job_id,
        submitter=j.submitter,
        kind=j.kind,
        state=job_state_to_pb(j.state),  # type: ignore[arg-type]
        spec_json=j.spec_json,
        spec_hash=j.spec_hash,
        created_ms=j.created_ms,
        updated_ms=j.updated_ms,
        tasks_total=j.tasks_total,
        tasks_done=j.tasks_done,
        task_failures=j.task_failures,
        result=blob_to_pb(j.result),
        error=j.error,
        verification=None if j.verification is None else verification_to_pb(j.verification),
    )


def job_from_pb(m: submit_pb2.Job) -> t.JobInfo:
    return t.JobInfo(
        job_id=m.job_id,
        submitter=m.submitter,
        kind=m.kind,
        state=job_state_from_pb(m.state),
        spec_json=bytes(m.spec_json),
        spec_hash=m.spec_hash,
        created_ms=m.created_ms,
        updated_ms=m.updated_ms,
        tasks_total=m.tasks_total,
        tasks_done=m.tasks_done,
        task_failures=m.task_failures,
        result=blob_from_pb(m.result) if m.HasField("result") else None,
        error=m.error,
        verification=verification_from_pb(m.verification) if m.HasField("verification") else None,
    )


def verification_to_pb(v: t.JobVerification) -> submit_pb2.JobVerification:
    return submit_pb2.JobVerification(
        mode=v.mode,
        checks=dict(v.checks),
        detection=v.detection,
        required_stake_wei=str(v.required_stake_wei),
        slashes=v.slashes,
        slashed_wei=str(v.slashed_wei),
        fee_budget_wei=str(v.fee_budget_wei),
        fee_paid_wei=str(v.fee_paid_wei),
        decoys=v.decoys,
        decoys_drawn=v.decoys_drawn,
        decoy_paid_wei=str(v.decoy_paid_wei),
        claims_drawn=v.claims_drawn,
        claims_paid_wei=str(v.claims_paid_wei),
    )


def verification_from_pb(m: submit_pb2.JobVerification) -> t.JobVerification:
    return t.JobVerification(
        mode=m.mode,
        checks={k: int(n) for k, n in sorted(m.checks.items())},
        detection=m.detection,
        required_stake_wei=int(m.required_stake_wei or 0),
        slashes=m.slashes,
        slashed_wei=int(m.slashed_wei or 0),
        fee_budget_wei=int(m.fee_budget_wei or 0),
        fee_paid_wei=int(m.fee_paid_wei or 0),
        decoys=m.decoys,
        decoys_drawn=m.decoys_drawn,
        decoy_paid_wei=int(m.decoy_paid_wei or 0),
        claims_drawn=m.claims_drawn,
        claims_paid_wei=int(m.claims_paid_wei or 0),
    )


def event_to_pb(e: t.JobEvent) -> submit_pb2.JobEvent:
    return submit_pb2.JobEvent(
        seq=e.seq,
        job_id=e.job_id,
        kind=e.kind,
        time_ms=e.time_ms,
        task_index=e.task_index,
        node=e.node,
        message=e.message,
        tasks_done=e.tasks_done,
        tasks_total=e.tasks_total,
        state=job_state_to_pb(e.state),  # type: ignore[arg-type]
    )


def event_from_pb(m: submit_pb2.JobEvent) -> t.JobEvent:
    return t.JobEvent(
        seq=m.seq,
        job_id=m.job_id,
        kind=m.kind,
        time_ms=m.time_ms,
        task_index=m.task_index,
        node=m.node,
        message=m.message,
        tasks_done=m.tasks_done,
        tasks_total=m.tasks_total,
        state=job_state_from_pb(m.state),
    )


def node_to_pb(n: t.NodeStatus) -> submit_pb2.NodeStatus:
    return submit_pb2.NodeStatus(
        address=n.address,
        device_kind=n.device_kind,
        memory_bytes=n.memory_bytes,
        last_seen_ms=n.last_seen_ms,
        draining=n.draining,
        completed=n.completed,
        failures=n.failures,
        rejections=n.rejections,
        backoff_until_ms=n.backoff_until_ms,
        consecutive_valid=n.consecutive_valid,
        verified=n.verified,
        caught=n.caught,
        slashed_wei=str(n.slashed_wei),
    )


def node_from_pb(m: submit_pb2.NodeStatus) -> t.NodeStatus:
    return t.NodeStatus(
        address=m.address,
        device_kind=m.device_kind,
        memory_bytes=m.memory_bytes,
        last_seen_ms=m.last_seen_ms,
        draining=m.draining,
        completed=m.completed,
        failures=m.failures,
        rejections=m.rejections,
        backoff_until_ms=m.backoff_until_ms,
        consecutive_valid=m.consecutive_valid,
        verified=m.verified,
        caught=m.caught,
        slashed_wei=int(m.slashed_wei or 0),
    )


def endpoint_to_pb(e: t.EndpointStatus) -> serving_pb2.EndpointStatus:
    return serving_pb2.EndpointStatus(
        endpoint_id=e.endpoint_id,
        state=e.state,
        serves=e.serves,
        min_replicas=e.min_replicas,
        max_replicas=e.max_replicas,
        replicas=[
            serving_pb2.ReplicaStatus(
                replica_id=r.replica_id, node=r.node, state=r.state, in_flight=r.in_flight, served=r.served
            )
            for r in e.replicas
        ],
        requests_per_s=e.requests_per_s,
        p50_ms=e.p50_ms,
        p99_ms=e.p99_ms,
        requests=e.requests,
        errors=e.errors,
        checked=e.checked,
        caught=e.caught,
        spent_wei=str(e.spent_wei),
        price_wei=str(e.price_wei),
        max_requests=e.max_requests,
        created_ms=e.created_ms,
        queued=e.queued,
    )


def endpoint_from_pb(m: serving_pb2.EndpointStatus) -> t.EndpointStatus:
    return t.EndpointStatus(
        endpoint_id=m.endpoint_id,
        state=m.state,
        serves=m.serves,
        min_replicas=m.min_replicas,
        max_replicas=m.max_replicas,
        replicas=[t.ReplicaStatus(r.replica_id, r.node, r.state, r.in_flight, r.served) for r in m.replicas],
        requests_per_s=m.requests_per_s,
        p50_ms=m.p50_ms,
        p99_ms=m.p99_ms,
        requests=m.requests,
        errors=m.errors,
        checked=m.checked,
        caught=m.caught,
        spent_wei=int(m.spent_wei or 0),
        price_wei=int(m.price_wei or 0),
        max_requests=m.max_requests,
        created_ms=m.created_ms,
        queued=m.queued,
    )
