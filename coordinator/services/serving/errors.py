"""Refusals of endpoint calls; the api maps each to its gRPC status (and retry hint)."""

from __future__ import annotations


class ServingError(Exception):
    code = "UNKNOWN"  # the grpc.StatusCode name the api answers with

    def __init__(self, message: str, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Saturated(ServingError):
    """Every ready replica holds max_queue requests."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(ServingError):
    """No replica is ready (yet)."""

    code = "UNAVAILABLE"


class DeadlineExceeded(ServingError):
    code = "DEADLINE_EXCEEDED"


class RequestFailed(ServingError):
    """The model failed on this request (the replica said why)."""

    code = "INVALID_ARGUMENT"


class StreamMismatch(ServingError):
    """A generation replica streamed tokens its final answer does not hold: what the caller was
    sent cannot be trusted (discard it and call again)."""

    code = "ABORTED"
