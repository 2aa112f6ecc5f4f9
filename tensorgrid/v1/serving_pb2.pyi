from tensorgrid.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServeDown(_message.Message):
    __slots__ = ("assign", "release", "cancel", "requests", "counted")
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    assign: ReplicaAssign
    release: ReplicaRelease
    cancel: ServeCancel
    requests: _containers.RepeatedCompositeFieldContainer[ServeRequest]
    counted: _containers.RepeatedCompositeFieldContainer[BatchCounted]
    def __init__(self, assign: _Optional[_Union[ReplicaAssign, _Mapping]] = ..., release: _Optional[_Union[ReplicaRelease, _Mapping]] = ..., cancel: _Optional[_Union[ServeCancel, _Mapping]] = ..., requests: _Optional[_Iterable[_Union[ServeRequest, _Mapping]]] = ..., counted: _Optional[_Iterable[_Union[BatchCounted, _Mapping]]] = ...) -> None: ...

class BatchCounted(_message.Message):
    __slots__ = ("endpoint_id", "task_id", "answered", "tag")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    task_id: str
    answered: int
    tag: bytes
    def __init__(self, endpoint_id: _Optional[str] = ..., task_id: _Optional[str] = ..., answered: _Optional[int] = ..., tag: _Optional[bytes] = ...) -> None: ...

class ReplicaAssign(_message.Message):
    __slots__ = ("endpoint_id", "replica_id", "serves", "model", "settings_json", "max_batch", "max_delay_us", "memory_limit_bytes", "time_limit_ms", "data_port", "data_token")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    SERVES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_MS_FIELD_NUMBER: _ClassVar[int]
    DATA_PORT_FIELD_NUMBER: _ClassVar[int]
    DATA_TOKEN_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    replica_id: str
    serves: str
    model: _common_pb2.BlobRef
    settings_json: bytes
    max_batch: int
    max_delay_us: int
    memory_limit_bytes: int
    time_limit_ms: int
    data_port: int
    data_token: bytes
    def __init__(self, endpoint_id: _Optional[str] = ..., replica_id: _Optional[str] = ..., serves: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., settings_json: _Optional[bytes] = ..., max_batch: _Optional[int] = ..., max_delay_us: _Optional[int] = ..., memory_limit_bytes: _Optional[int] = ..., time_limit_ms: _Optional[int] = ..., data_port: _Optional[int] = ..., data_token: _Optional[bytes] = ...) -> None: ...

class ReplicaRelease(_message.Message):
    __slots__ = ("replica_id", "reason")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    reason: str
    def __init__(self, replica_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ServeRequest(_message.Message):
    __slots__ = ("replica_id", "request_id", "input", "deadline_ms", "seed")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    request_id: int
    input: bytes
    deadline_ms: int
    seed: int
    def __init__(self, replica_id: _Optional[str] = ..., request_id: _Optional[int] = ..., input: _Optional[bytes] = ..., deadline_ms: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class ServeCancel(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    def __init__(self, request_id: _Optional[int] = ...) -> None: ...

class ServeUp(_message.Message):
    __slots__ = ("hello", "state", "replies", "receipts")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    hello: ServeHello
    state: ReplicaState
    replies: _containers.RepeatedCompositeFieldContainer[ServeReply]
    receipts: _containers.RepeatedCompositeFieldContainer[BatchReceipt]
    def __init__(self, hello: _Optional[_Union[ServeHello, _Mapping]] = ..., state: _Optional[_Union[ReplicaState, _Mapping]] = ..., replies: _Optional[_Iterable[_Union[ServeReply, _Mapping]]] = ..., receipts: _Optional[_Iterable[_Union[BatchReceipt, _Mapping]]] = ...) -> None: ...

class ServeHello(_message.Message):
    __slots__ = ("max_replicas", "warm_endpoints", "counted")
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    WARM_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    max_replicas: int
    warm_endpoints: _containers.RepeatedScalarFieldContainer[str]
    counted: _containers.RepeatedCompositeFieldContainer[BatchCounted]
    def __init__(self, max_replicas: _Optional[int] = ..., warm_endpoints: _Optional[_Iterable[str]] = ..., counted: _Optional[_Iterable[_Union[BatchCounted, _Mapping]]] = ...) -> None: ...

class ReplicaState(_message.Message):
    __slots__ = ("replica_id", "ready", "error")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    ready: bool
    error: _common_pb2.TaskError
    def __init__(self, replica_id: _Optional[str] = ..., ready: _Optional[bool] = ..., error: _Optional[_Union[_common_pb2.TaskError, _Mapping]] = ...) -> None: ...

class ServeReply(_message.Message):
    __slots__ = ("request_id", "output", "error", "tokens", "done", "batch")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    output: bytes
    error: _common_pb2.TaskError
    tokens: _containers.RepeatedScalarFieldContainer[int]
    done: bool
    batch: int
    def __init__(self, request_id: _Optional[int] = ..., output: _Optional[bytes] = ..., error: _Optional[_Union[_common_pb2.TaskError, _Mapping]] = ..., tokens: _Optional[_Iterable[int]] = ..., done: _Optional[bool] = ..., batch: _Optional[int] = ...) -> None: ...

class BatchReceipt(_message.Message):
    __slots__ = ("replica_id", "batch", "request_ids", "receipt")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    batch: int
    request_ids: _containers.RepeatedScalarFieldContainer[int]
    receipt: _common_pb2.Receipt
    def __init__(self, replica_id: _Optional[str] = ..., batch: _Optional[int] = ..., request_ids: _Optional[_Iterable[int]] = ..., receipt: _Optional[_Union[_common_pb2.Receipt, _Mapping]] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("endpoint_id", "input", "timeout_ms", "seed", "request_id", "request_key")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_KEY_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    input: bytes
    timeout_ms: int
    seed: int
    request_id: int
    request_key: bytes
    def __init__(self, endpoint_id: _Optional[str] = ..., input: _Optional[bytes] = ..., timeout_ms: _Optional[int] = ..., seed: _Optional[int] = ..., request_id: _Optional[int] = ..., request_key: _Optional[bytes] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("output", "node", "attempts", "request_id", "code", "error", "retry_after_ms")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    output: bytes
    node: str
    attempts: int
    request_id: int
    code: int
    error: str
    retry_after_ms: int
    def __init__(self, output: _Optional[bytes] = ..., node: _Optional[str] = ..., attempts: _Optional[int] = ..., request_id: _Optional[int] = ..., code: _Optional[int] = ..., error: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("tokens", "done", "output", "node")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    done: bool
    output: bytes
    node: str
    def __init__(self, tokens: _Optional[_Iterable[int]] = ..., done: _Optional[bool] = ..., output: _Optional[bytes] = ..., node: _Optional[str] = ...) -> None: ...

class GetEndpointRequest(_message.Message):
    __slots__ = ("endpoint_id",)
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    def __init__(self, endpoint_id: _Optional[str] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteEndpointRequest(_message.Message):
    __slots__ = ("endpoint_id", "signature")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    signature: bytes
    def __init__(self, endpoint_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("replica_id", "node", "state", "in_flight", "served")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    node: str
    state: str
    in_flight: int
    served: int
    def __init__(self, replica_id: _Optional[str] = ..., node: _Optional[str] = ..., state: _Optional[str] = ..., in_flight: _Optional[int] = ..., served: _Optional[int] = ...) -> None: ...

class EndpointStatus(_message.Message):
    __slots__ = ("endpoint_id", "state", "serves", "min_replicas", "max_replicas", "replicas", "requests_per_s", "p50_ms", "p99_ms", "requests", "errors", "checked", "caught", "spent_wei", "price_wei", "max_requests", "created_ms", "queued")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SERVES_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_S_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_FIELD_NUMBER: _ClassVar[int]
    SPENT_WEI_FIELD_NUMBER: _ClassVar[int]
    PRICE_WEI_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    state: str
    serves: str
    min_replicas: int
    max_replicas: int
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    checked: int
    caught: int
    spent_wei: str
    price_wei: str
    max_requests: int
    created_ms: int
    queued: int
    def __init__(self, endpoint_id: _Optional[str] = ..., state: _Optional[str] = ..., serves: _Optional[str] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., requests_per_s: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., checked: _Optional[int] = ..., caught: _Optional[int] = ..., spent_wei: _Optional[str] = ..., price_wei: _Optional[str] = ..., max_requests: _Optional[int] = ..., created_ms: _Optional[int] = ..., queued: _Optional[int] = ...) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointStatus]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[EndpointStatus, _Mapping]]] = ...) -> None: ...
