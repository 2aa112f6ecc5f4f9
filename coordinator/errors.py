"""Coordinator-side failures, each mapped to one gRPC status by the api layer."""

from __future__ import annotations

from tensorgrid.errors import TensorGridError


class InvalidArgument(TensorGridError):
    """A request field is malformed (an address, an id): the message names the field."""


class NotFound(TensorGridError):
    """The job, task or node asked for does not exist."""


class PermissionDenied(TensorGridError):
    """The caller is not who may do this."""


class Rejected(TensorGridError):
    """A result, registration or request is refused; counted against the sender when it is a node."""


class Forged(Rejected):
    """A result its sender could not have produced honestly: a bad signature, someone else's or
    an expired lease, a replayed receipt. It says nothing about the workload, so it does not
    use up one of the task's attempts (cheaters cannot fail a job by grabbing its tasks)."""


class Conflict(TensorGridError):
    """The request is valid but the object is in a state that forbids it."""


class QuotaExceeded(TensorGridError):
    """The caller would go over one of its quotas (or a rate limit): the message says which and what is left."""
