from tensorgrid.v1 import common_pb2 as _common_pb2
from tensorgrid.v1 import serving_pb2 as _serving_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class BulkUploadRequest(_message.Message):
    __slots__ = ("size", "sha256")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    size: int
    sha256: str
    def __init__(self, size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class BulkTicket(_message.Message):
    __slots__ = ("port", "token", "size", "expires_at_ms", "stored")
    PORT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    port: int
    token: bytes
    size: int
    expires_at_ms: int
    stored: _common_pb2.BlobRef
    def __init__(self, port: _Optional[int] = ..., token: _Optional[bytes] = ..., size: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., stored: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ...) -> None: ...

class SessionChallengeRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class SessionChallenge(_message.Message):
    __slots__ = ("nonce", "expires_at_ms")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    expires_at_ms: int
    def __init__(self, nonce: _Optional[bytes] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("address", "nonce", "signature", "scope")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    address: str
    nonce: bytes
    signature: bytes
    scope: str
    def __init__(self, address: _Optional[str] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., scope: _Optional[str] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_token", "expires_at_ms")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    expires_at_ms: int
    def __init__(self, session_token: _Optional[str] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("sha256", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec_json", "submitter", "signature")
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    spec_json: bytes
    submitter: str
    signature: bytes
    def __init__(self, spec_json: _Optional[bytes] = ..., submitter: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ValidateJobResponse(_message.Message):
    __slots__ = ("job_id", "tasks", "paid_tasks", "exists")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    PAID_TASKS_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    tasks: int
    paid_tasks: int
    exists: bool
    def __init__(self, job_id: _Optional[str] = ..., tasks: _Optional[int] = ..., paid_tasks: _Optional[int] = ..., exists: _Optional[bool] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "submitter", "kind", "state", "spec_json", "spec_hash", "created_ms", "updated_ms", "tasks_total", "tasks_done", "task_failures", "result", "error", "verification")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    SPEC_HASH_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    TASKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    TASK_FAILURES_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    submitter: str
    kind: str
    state: JobState
    spec_json: bytes
    spec_hash: str
    created_ms: int
    updated_ms: int
    tasks_total: int
    tasks_done: int
    task_failures: int
    result: _common_pb2.BlobRef
    error: str
    verification: JobVerification
    def __init__(self, job_id: _Optional[str] = ..., submitter: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., spec_json: _Optional[bytes] = ..., spec_hash: _Optional[str] = ..., created_ms: _Optional[int] = ..., updated_ms: _Optional[int] = ..., tasks_total: _Optional[int] = ..., tasks_done: _Optional[int] = ..., task_failures: _Optional[int] = ..., result: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., error: _Optional[str] = ..., verification: _Optional[_Union[JobVerification, _Mapping]] = ...) -> None: ...

class JobVerification(_message.Message):
    __slots__ = ("mode", "checks", "detection", "required_stake_wei", "slashes", "slashed_wei", "fee_budget_wei", "fee_paid_wei", "decoys", "decoys_drawn", "decoy_paid_wei", "claims_drawn", "claims_paid_wei")
    class ChecksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODE_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    DETECTION_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_STAKE_WEI_FIELD_NUMBER: _ClassVar[int]
    SLASHES_FIELD_NUMBER: _ClassVar[int]
    SLASHED_WEI_FIELD_NUMBER: _ClassVar[int]
    FEE_BUDGET_WEI_FIELD_NUMBER: _ClassVar[int]
    FEE_PAID_WEI_FIELD_NUMBER: _ClassVar[int]
    DECOYS_FIELD_NUMBER: _ClassVar[int]
    DECOYS_DRAWN_FIELD_NUMBER: _ClassVar[int]
    DECOY_PAID_WEI_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_DRAWN_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_PAID_WEI_FIELD_NUMBER: _ClassVar[int]
    mode: str
    checks: _containers.ScalarMap[str, int]
    detection: float
    required_stake_wei: str
    slashes: int
    slashed_wei: str
    fee_budget_wei: str
    fee_paid_wei: str
    decoys: int
    decoys_drawn: int
    decoy_paid_wei: str
    claims_drawn: int
    claims_paid_wei: str
    def __init__(self, mode: _Optional[str] = ..., checks: _Optional[_Mapping[str, int]] = ..., detection: _Optional[float] = ..., required_stake_wei: _Optional[str] = ..., slashes: _Optional[int] = ..., slashed_wei: _Optional[str] = ..., fee_budget_wei: _Optional[str] = ..., fee_paid_wei: _Optional[str] = ..., decoys: _Optional[int] = ..., decoys_drawn: _Optional[int] = ..., decoy_paid_wei: _Optional[str] = ..., claims_drawn: _Optional[int] = ..., claims_paid_wei: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("submitter", "limit", "before_job_id")
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    submitter: str
    limit: int
    before_job_id: str
    def __init__(self, submitter: _Optional[str] = ..., limit: _Optional[int] = ..., before_job_id: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id", "signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    signature: bytes
    def __init__(self, job_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_seq", "recorded_only")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    RECORDED_ONLY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    recorded_only: bool
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., recorded_only: _Optional[bool] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("seq", "job_id", "kind", "time_ms", "task_index", "node", "message", "tasks_done", "tasks_total", "state")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    TASKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    job_id: str
    kind: str
    time_ms: int
    task_index: int
    node: str
    message: str
    tasks_done: int
    tasks_total: int
    state: JobState
    def __init__(self, seq: _Optional[int] = ..., job_id: _Optional[str] = ..., kind: _Optional[str] = ..., time_ms: _Optional[int] = ..., task_index: _Optional[int] = ..., node: _Optional[str] = ..., message: _Optional[str] = ..., tasks_done: _Optional[int] = ..., tasks_total: _Optional[int] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("address", "device_kind", "memory_bytes", "last_seen_ms", "draining", "completed", "failures", "rejections", "backoff_until_ms", "consecutive_valid", "verified", "caught", "slashed_wei")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_KIND_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_VALID_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_FIELD_NUMBER: _ClassVar[int]
    SLASHED_WEI_FIELD_NUMBER: _ClassVar[int]
    address: str
    device_kind: str
    memory_bytes: int
    last_seen_ms: int
    draining: bool
    completed: int
    failures: int
    rejections: int
    backoff_until_ms: int
    consecutive_valid: int
    verified: int
    caught: int
    slashed_wei: str
    def __init__(self, address: _Optional[str] = ..., device_kind: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., last_seen_ms: _Optional[int] = ..., draining: _Optional[bool] = ..., completed: _Optional[int] = ..., failures: _Optional[int] = ..., rejections: _Optional[int] = ..., backoff_until_ms: _Optional[int] = ..., consecutive_valid: _Optional[int] = ..., verified: _Optional[int] = ..., caught: _Optional[int] = ..., slashed_wei: _Optional[str] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ...) -> None: ...

class GetEarningsRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class Earnings(_message.Message):
    __slots__ = ("address", "cumulative_wei", "pending_wei", "claim_epoch", "claim_cumulative_wei", "claim_proof", "slashed_wei")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_WEI_FIELD_NUMBER: _ClassVar[int]
    PENDING_WEI_FIELD_NUMBER: _ClassVar[int]
    CLAIM_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CLAIM_CUMULATIVE_WEI_FIELD_NUMBER: _ClassVar[int]
    CLAIM_PROOF_FIELD_NUMBER: _ClassVar[int]
    SLASHED_WEI_FIELD_NUMBER: _ClassVar[int]
    address: str
    cumulative_wei: str
    pending_wei: str
    claim_epoch: int
    claim_cumulative_wei: str
    claim_proof: _containers.RepeatedScalarFieldContainer[bytes]
    slashed_wei: str
    def __init__(self, address: _Optional[str] = ..., cumulative_wei: _Optional[str] = ..., pending_wei: _Optional[str] = ..., claim_epoch: _Optional[int] = ..., claim_cumulative_wei: _Optional[str] = ..., claim_proof: _Optional[_Iterable[bytes]] = ..., slashed_wei: _Optional[str] = ...) -> None: ...

class GetEpochRequest(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class EpochLeaf(_message.Message):
    __slots__ = ("node", "cumulative_wei")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_WEI_FIELD_NUMBER: _ClassVar[int]
    node: str
    cumulative_wei: str
    def __init__(self, node: _Optional[str] = ..., cumulative_wei: _Optional[str] = ...) -> None: ...

class Epoch(_message.Message):
    __slots__ = ("epoch", "root", "state", "total_wei", "created_ms", "leaves")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WEI_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    LEAVES_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    root: str
    state: str
    total_wei: str
    created_ms: int
    leaves: _containers.RepeatedCompositeFieldContainer[EpochLeaf]
    def __init__(self, epoch: _Optional[int] = ..., root: _Optional[str] = ..., state: _Optional[str] = ..., total_wei: _Optional[str] = ..., created_ms: _Optional[int] = ..., leaves: _Optional[_Iterable[_Union[EpochLeaf, _Mapping]]] = ...) -> None: ...
