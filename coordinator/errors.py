"""Coordinator-side failures, each mapped to one gRPC status by the api layer."""

from __future__ import annotations

from tensorgrid.errors import TensorGridError


class NotFound(TensorGridError):
    """The job, task or node asked for does not exist."""


class PermissionDenied(TensorGridError):
    """The caller is not who may do this."""


class Rejected(TensorGridError):
    """A result, registration or request is refused; counted against the sender when it is a node."""


class Conflict(TensorGridError):
    """The request is valid but the object is in a state that forbids it."""
