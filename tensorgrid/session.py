"""A submitter's session with a coordinator: the challenge it signs, the token every call
carries, renewal when the coordinator forgets it, and the errors the SDK raises."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from tensorgrid.crypto import FULL_SCOPE, Signer, session_message, sign_message
from tensorgrid.errors import TensorGridError
from tensorgrid.rpc import RETRY_AFTER_METADATA_KEY, SESSION_METADATA_KEY
from tensorgrid.tls import explain_unavailable
from tensorgrid.v1 import submit_pb2, submit_pb2_grpc

if TYPE_CHECKING:
    from tensorgrid.spec import JobSpec

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]
SESSION_MARGIN_MS = 60_000  # a session this close to its end is renewed before the next call


@dataclass(frozen=True)
class Validated:
    """The coordinator would take the spec: its job id, planned tasks, and the results its escrow
    must cover (paid_tasks); exists: the same spec was already submitted."""

    job_id: str
    tasks: int
    paid_tasks: int
    exists: bool


class CoordinatorError(TensorGridError):
    """The coordinator refused a request or could not be reached; `code` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_ms = retry_after_ms  # the coordinator's hint, sent with RESOURCE_EXHAUSTED


class SubmitInterrupted(CoordinatorError):
    """The job's escrow is funded but the coordinator could not be reached to take the job.

    Nothing is lost: `client.submit(e.spec, tasks=e.tasks)` submits it again once the coordinator
    is back (the escrow is not funded twice), or cancel the escrow on chain for a refund (no task
    can have been leased for it)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, spec: JobSpec, tasks: int, job_id: str) -> None:
        super().__init__(code, message)
        self.spec = spec
        self.tasks = tasks
        self.job_id = job_id


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        raise wrap(e) from None


def unauthenticated(e: grpc.RpcError) -> bool:
    return e.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined,no-any-return]


def wrap(e: grpc.RpcError) -> CoordinatorError:
    code = e.code()  # type: ignore[attr-defined]
    details = e.details()  # type: ignore[attr-defined]
    hint = _retry_hint(e)
    if code == grpc.StatusCode.UNAVAILABLE:
        return CoordinatorError(code, explain_unavailable(details or ""), hint)
    return CoordinatorError(code, details or code.name, hint)


def _retry_hint(e: grpc.RpcError) -> int | None:
    try:
        value = dict(e.trailing_metadata() or ()).get(RETRY_AFTER_METADATA_KEY)  # type: ignore[attr-defined]
        return None if value is None else max(0, int(value))
    except (AttributeError, TypeError, ValueError):
        return None


class Session:
    """Opens the session on first use and renews it; runs calls with its metadata.

    scope: FULL_SCOPE (every call) or DASHBOARD_SCOPE (a read-only web dashboard session, which
    every gRPC call refuses: for a `tensorgrid dashboard` link, not for calls)."""

    def __init__(
        self, stub: submit_pb2_grpc.SubmitterServiceStub, signer: Signer, timeout: float, scope: str = FULL_SCOPE
    ) -> None:
        self.stub = stub
        self.signer = signer
        self.timeout = timeout
        self.scope = scope
        self.token = ""
        self._expires_ms = 0

    @property
    def expires_ms(self) -> int:
        """When the open session ends (ms since the epoch; 0 before it opens)."""
        return self._expires_ms

    @property
    def fresh(self) -> bool:
        """True when metadata() needs no round trip (the session is open and not near its end)."""
        return bool(self.token) and self._expires_ms - SESSION_MARGIN_MS >= time.time() * 1000

    def metadata(self) -> Metadata:
        """The session metadata of the next call, opening (or renewing) the session first if needed."""
        if not self.fresh:
            self.open()
        return ((SESSION_METADATA_KEY, self.token),)

    def open(self) -> None:
        """Prove to the coordinator that this client holds the submitter key (the SDK does it on
        the first call and again whenever the session ends)."""
        address = self.signer.address
        challenge = call(
            self.stub.GetChallenge, submit_pb2.SessionChallengeRequest(address=address), timeout=self.timeout
        )
        sig = sign_message(self.signer, session_message(address, challenge.nonce, self.scope))
        req = submit_pb2.OpenSessionRequest(address=address, nonce=challenge.nonce, signature=sig, scope=self.scope)
        session = call(self.stub.OpenSession, req, timeout=self.timeout)
        self.token, self._expires_ms = session.session_token, session.expires_at_ms

    def forget(self) -> None:
        """The coordinator no longer knows the session: the next call opens another."""
        self.token = ""

    def authed(self, attempt: Callable[[Metadata], T]) -> T:
        """Run attempt(metadata); if the session was refused (expired, revoked, coordinator
        restarted without it), open a new one and try once more."""
        try:
            return attempt(self.metadata())
        except grpc.RpcError as e:
            if not unauthenticated(e):
                raise wrap(e) from None
        self.forget()
        try:
            return attempt(self.metadata())
        except grpc.RpcError as e:
            raise wrap(e) from None

    def unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        return self.authed(lambda md: method(request, metadata=md, timeout=timeout or self.timeout))
