from tensorgrid.v1 import common_pb2 as _common_pb2
from tensorgrid.v1 import serving_pb2 as _serving_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChallengeRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("nonce", "expires_at_ms", "domain")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    expires_at_ms: int
    domain: Domain
    def __init__(self, nonce: _Optional[bytes] = ..., expires_at_ms: _Optional[int] = ..., domain: _Optional[_Union[Domain, _Mapping]] = ...) -> None: ...

class Domain(_message.Message):
    __slots__ = ("name", "version", "chain_id", "verifying_contract")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    VERIFYING_CONTRACT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    chain_id: int
    verifying_contract: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., chain_id: _Optional[int] = ..., verifying_contract: _Optional[str] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("device_kind", "memory_bytes", "cpu_cores", "gpus", "max_concurrent", "torch_version")
    DEVICE_KIND_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    device_kind: str
    memory_bytes: int
    cpu_cores: int
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    max_concurrent: int
    torch_version: str
    def __init__(self, device_kind: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., cpu_cores: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., max_concurrent: _Optional[int] = ..., torch_version: _Optional[str] = ...) -> None: ...

class Gpu(_message.Message):
    __slots__ = ("name", "memory_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    memory_bytes: int
    def __init__(self, name: _Optional[str] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("address", "nonce", "signature", "capabilities", "version")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    address: str
    nonce: bytes
    signature: bytes
    capabilities: Capabilities
    version: str
    def __init__(self, address: _Optional[str] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., version: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("session_token", "heartbeat_interval_ms", "domain")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    heartbeat_interval_ms: int
    domain: Domain
    def __init__(self, session_token: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ..., domain: _Optional[_Union[Domain, _Mapping]] = ...) -> None: ...

class LeaseKey(_message.Message):
    __slots__ = ("task_id", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("active", "draining")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    active: _containers.RepeatedCompositeFieldContainer[LeaseKey]
    draining: bool
    def __init__(self, active: _Optional[_Iterable[_Union[LeaseKey, _Mapping]]] = ..., draining: _Optional[bool] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("revoked", "server_time_ms", "heartbeat_interval_ms")
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    revoked: _containers.RepeatedCompositeFieldContainer[LeaseKey]
    server_time_ms: int
    heartbeat_interval_ms: int
    def __init__(self, revoked: _Optional[_Iterable[_Union[LeaseKey, _Mapping]]] = ..., server_time_ms: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("max_tasks", "wait_ms")
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    max_tasks: int
    wait_ms: int
    def __init__(self, max_tasks: _Optional[int] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("job_id", "task_id", "attempt", "deadline_ms", "kind", "model", "input", "settings_json", "memory_limit_bytes", "time_limit_ms")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_MS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    task_id: str
    attempt: int
    deadline_ms: int
    kind: str
    model: _common_pb2.BlobRef
    input: _common_pb2.BlobRef
    settings_json: bytes
    memory_limit_bytes: int
    time_limit_ms: int
    def __init__(self, job_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., kind: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., input: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., settings_json: _Optional[bytes] = ..., memory_limit_bytes: _Optional[int] = ..., time_limit_ms: _Optional[int] = ...) -> None: ...

class LeaseResponse(_message.Message):
    __slots__ = ("leases", "retry_after_ms")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    retry_after_ms: int
    def __init__(self, leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class ResultHeader(_message.Message):
    __slots__ = ("receipt", "output_size", "want_tasks")
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    WANT_TASKS_FIELD_NUMBER: _ClassVar[int]
    receipt: _common_pb2.Receipt
    output_size: int
    want_tasks: int
    def __init__(self, receipt: _Optional[_Union[_common_pb2.Receipt, _Mapping]] = ..., output_size: _Optional[int] = ..., want_tasks: _Optional[int] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ResultHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ResultHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SmallResult(_message.Message):
    __slots__ = ("header", "output")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    header: ResultHeader
    output: bytes
    def __init__(self, header: _Optional[_Union[ResultHeader, _Mapping]] = ..., output: _Optional[bytes] = ...) -> None: ...

class SubmitResultResponse(_message.Message):
    __slots__ = ("accepted", "reason", "reveal_steps", "leases", "retry_after_ms")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVEAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    reveal_steps: _containers.RepeatedScalarFieldContainer[int]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    retry_after_ms: int
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., reveal_steps: _Optional[_Iterable[int]] = ..., leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class RevealHeader(_message.Message):
    __slots__ = ("task_id", "attempt", "step", "size", "sha256")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    step: int
    size: int
    sha256: str
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., step: _Optional[int] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class RevealChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: RevealHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[RevealHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RevealResponse(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class FailureReport(_message.Message):
    __slots__ = ("task_id", "attempt", "error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    error: _common_pb2.TaskError
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., error: _Optional[_Union[_common_pb2.TaskError, _Mapping]] = ...) -> None: ...

class FailureAck(_message.Message):
    __slots__ = ("reissued",)
    REISSUED_FIELD_NUMBER: _ClassVar[int]
    reissued: bool
    def __init__(self, reissued: _Optional[bool] = ...) -> None: ...
