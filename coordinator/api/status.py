"""One table from our exceptions to gRPC status codes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import grpc

from coordinator.errors import Conflict, InvalidArgument, NotFound, PermissionDenied, QuotaExceeded, Rejected
from tensorgrid.crypto import normalize_address
from tensorgrid.errors import (
    BlobError,
    HashMismatch,
    InvalidTensorFile,
    SignatureError,
    SpecError,
    TensorGridError,
    UnsafeFileError,
)

log = logging.getLogger("tensorgrid.coordinator")
R = TypeVar("R")

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (Rejected, grpc.StatusCode.FAILED_PRECONDITION),
    (HashMismatch, grpc.StatusCode.DATA_LOSS),
    (SpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnsafeFileError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidTensorFile, grpc.StatusCode.INVALID_ARGUMENT),
    (SignatureError, grpc.StatusCode.UNAUTHENTICATED),
    (BlobError, grpc.StatusCode.INVALID_ARGUMENT),
    (TensorGridError, grpc.StatusCode.INVALID_ARGUMENT),
]


def request_address(value: str, field: str = "address") -> str:
    """A request's address field in checksum form; InvalidArgument (not a signature failure) if
    it is no address at all."""
    try:
        return normalize_address(value)
    except SignatureError as e:
        raise InvalidArgument(f"{field}: {e}") from None


def status_for(exc: Exception) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    code = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("internal error", exc_info=exc)
        await context.abort(code, "internal error in the coordinator; see its log")
    await context.abort(code, str(exc))
    raise AssertionError("unreachable")


def unary(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Map TensorGrid errors raised by a unary handler to a gRPC status."""

    @wraps(fn)
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await fn(self, request, context)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as e:
            await abort(context, e)

    return handler
