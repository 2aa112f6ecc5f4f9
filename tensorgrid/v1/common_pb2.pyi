from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_KIND_UNSPECIFIED: _ClassVar[ErrorKind]
    ERROR_KIND_INVALID_INPUT: _ClassVar[ErrorKind]
    ERROR_KIND_UNSAFE_INPUT: _ClassVar[ErrorKind]
    ERROR_KIND_OUT_OF_MEMORY: _ClassVar[ErrorKind]
    ERROR_KIND_TIMEOUT: _ClassVar[ErrorKind]
    ERROR_KIND_EXECUTION: _ClassVar[ErrorKind]
    ERROR_KIND_BLOB_UNAVAILABLE: _ClassVar[ErrorKind]
    ERROR_KIND_CRASHED: _ClassVar[ErrorKind]
    ERROR_KIND_RELEASED: _ClassVar[ErrorKind]
    ERROR_KIND_PROGRAM_ERROR: _ClassVar[ErrorKind]
ERROR_KIND_UNSPECIFIED: ErrorKind
ERROR_KIND_INVALID_INPUT: ErrorKind
ERROR_KIND_UNSAFE_INPUT: ErrorKind
ERROR_KIND_OUT_OF_MEMORY: ErrorKind
ERROR_KIND_TIMEOUT: ErrorKind
ERROR_KIND_EXECUTION: ErrorKind
ERROR_KIND_BLOB_UNAVAILABLE: ErrorKind
ERROR_KIND_CRASHED: ErrorKind
ERROR_KIND_RELEASED: ErrorKind
ERROR_KIND_PROGRAM_ERROR: ErrorKind

class BlobRef(_message.Message):
    __slots__ = ("sha256", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class FetchBlobRequest(_message.Message):
    __slots__ = ("sha256", "offset")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("data", "total_size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_size: int
    def __init__(self, data: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...

class TaskError(_message.Message):
    __slots__ = ("kind", "message")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: ErrorKind
    message: str
    def __init__(self, kind: _Optional[_Union[ErrorKind, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("job_id", "task_id", "attempt", "input_hash", "output_hash", "commitment", "signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    INPUT_HASH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_HASH_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    task_id: str
    attempt: int
    input_hash: str
    output_hash: str
    commitment: str
    signature: bytes
    def __init__(self, job_id: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., input_hash: _Optional[str] = ..., output_hash: _Optional[str] = ..., commitment: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...
