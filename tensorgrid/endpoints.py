"""Endpoints from the submitter's side: create, call, watch and delete them (docs/SERVING.md).

    with Client(target, signer) as c:
        endpoint = c.endpoints.create("model.pt2", max_replicas=2)
        c.endpoints.wait_ready(endpoint)
        out = c.infer(endpoint, {"x": torch.randn(4, 16)})

A call the grid cannot take now (every replica full: RESOURCE_EXHAUSTED; none ready yet:
UNAVAILABLE) is retried after the coordinator's hint until the call's deadline; every other
refusal raises CoordinatorError at once.
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from tensorgrid import serde
from tensorgrid.crypto import Signer, cancel_message, sign_message
from tensorgrid.errors import TensorGridError
from tensorgrid.retry import backoff
from tensorgrid.session import CoordinatorError, wrap
from tensorgrid.spec import EndpointSpec
from tensorgrid.types import BlobRef, EndpointStatus, JobInfo
from tensorgrid.v1 import serving_pb2

if TYPE_CHECKING:
    import torch

    from tensorgrid.infer_stream import BlockingInferStream
    from tensorgrid.session import Session
    from tensorgrid.v1.submit_pb2_grpc import SubmitterServiceStub

RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Answer:
    """One request's answer: its output (safetensors bytes), the node that gave it, and how
    many replicas the coordinator tried (more than one after a failover)."""

    output: bytes
    node: str
    attempts: int


def retry_delay(error: CoordinatorError, failures: int, deadline: float) -> float | None:
    """Seconds to wait before trying a refused call again, or None when it must not be retried
    (not a retryable code, or the wait would pass the deadline, a time.monotonic() value).
    The coordinator's hint when it sent one, else a short backoff; growing with each refusal."""
    if error.code not in RETRYABLE:
        return None
    if error.retry_after_ms is not None:
        delay = min(2.0, error.retry_after_ms / 1000 * (1 + 0.5 * (failures - 1)))
    else:
        delay = backoff(failures, 0.05, cap=2.0)
    return delay if time.monotonic() + delay < deadline else None


def prompt_bytes(prompt: Sequence[int]) -> bytes:
    """A generation request's input: one prompt as the prompt file format (docs/GENERATION.md)."""
    import torch

    from tensorgrid.serving.tensors import tensors_to_bytes

    if not prompt:
        raise TensorGridError("a prompt needs at least one token")
    tokens = torch.tensor([list(prompt)], dtype=torch.int64)
    return tensors_to_bytes({"tokens": tokens, "lengths": torch.tensor([len(prompt)], dtype=torch.int64)})


def as_bytes(tensors: Mapping[str, torch.Tensor] | bytes) -> bytes:
    if isinstance(tensors, bytes | bytearray | memoryview):
        return bytes(tensors)
    from tensorgrid.serving.tensors import tensors_to_bytes

    return tensors_to_bytes(tensors)


class Host(Protocol):
    """What Endpoints uses of its tensorgrid.client.Client."""

    stub: SubmitterServiceStub
    session: Session
    signer: Signer
    infer_stream: BlockingInferStream

    def upload(self, path: str | os.PathLike[str]) -> BlobRef: ...

    def submit(self, spec: EndpointSpec, tasks: int | None = None) -> JobInfo: ...

    def take_back_escrow(self, job_id: str) -> None: ...


class Endpoints:
    """The endpoint calls of one Client (its connection, session and key)."""

    def __init__(self, client: Host) -> None:
        self._client = client
        self._stub = client.stub

    # ---- lifecycle -----------------------------------------------------------------------------
    def create(self, model: str | os.PathLike[str] | BlobRef, **fields: Any) -> str:
        """Upload the model (a .pt2 path) unless it is a BlobRef already stored, submit an
        endpoint spec (tensorgrid.spec.EndpointSpec's fields) and return the endpoint id.
        A paid endpoint (reward_per_task_wei: the price per request, and max_requests) funds its
        escrow first when the client has a chain handle, as a job does."""
        EndpointSpec(model=BlobRef("0" * 64, 0), **fields).validate()  # bad settings fail before uploading
        ref = model if isinstance(model, BlobRef) else self._client.upload(model)
        spec = EndpointSpec(model=ref, **fields)
        return self._client.submit(spec, tasks=spec.max_requests or None).job_id

    def get(self, endpoint_id: str) -> EndpointStatus:
        req = serving_pb2.GetEndpointRequest(endpoint_id=endpoint_id)
        return serde.endpoint_from_pb(self._client.session.unary(self._stub.GetEndpoint, req))

    def list(self) -> builtins.list[EndpointStatus]:
        resp = self._client.session.unary(self._stub.ListEndpoints, serving_pb2.ListEndpointsRequest())
        return [serde.endpoint_from_pb(e) for e in resp.endpoints]

    def delete(self, endpoint_id: str) -> EndpointStatus:
        """Stop the endpoint: its replicas are released and what they served stays paid; with a
        chain handle the rest of the escrow is taken back as for a cancelled job."""
        sig = sign_message(self._client.signer, cancel_message(endpoint_id))
        req = serving_pb2.DeleteEndpointRequest(endpoint_id=endpoint_id, signature=sig)
        status = serde.endpoint_from_pb(self._client.session.unary(self._stub.DeleteEndpoint, req))
        self._client.take_back_escrow(endpoint_id)
        return status

    def wait_ready(
        self,
        endpoint_id: str,
        replicas: int = 1,
        timeout_s: float = 300.0,
        on_change: Callable[[EndpointStatus], None] | None = None,
    ) -> EndpointStatus:
        """Poll until `replicas` replicas are ready; on_change sees each new status."""
        give_up = time.monotonic() + timeout_s
        last: tuple[int, int] | None = None
        while True:
            status = self.get(endpoint_id)
            if on_change is not None and (status.ready, len(status.replicas)) != last:
                on_change(status)
            last = (status.ready, len(status.replicas))
            if status.ready >= replicas:
                return status
            if status.state != "running":
                raise TensorGridError(f"endpoint {endpoint_id} is {status.state}")
            if time.monotonic() > give_up:
                raise TensorGridError(
                    f"endpoint {endpoint_id}: {status.ready} of {replicas} replicas ready after {timeout_s:.0f}s "
                    f"({len(status.replicas)} assigned); are nodes serving (node --serve-replicas)?"
                )
            time.sleep(0.2)

    # ---- calls ---------------------------------------------------------------------------------
    def infer_bytes(
        self, endpoint_id: str, data: bytes, *, timeout_s: float | None = None, seed: int = 0, retry: bool = True
    ) -> Answer:
        """Send one request (safetensors bytes) and return its answer: on the Client's open
        InferStream, or as a unary Infer when the stream cannot take it (tensorgrid.infer_stream)."""
        timeout = timeout_s or DEFAULT_TIMEOUT_S
        deadline = time.monotonic() + timeout
        req = serving_pb2.InferRequest(
            endpoint_id=endpoint_id, input=data, timeout_ms=int(timeout * 1000), seed=seed, request_key=os.urandom(16)
        )  # the key: sent again after a broken stream or a refusal, it is answered once, not run twice
        session = self._client.session
        failures = 0
        while True:
            try:
                resp = self._client.infer_stream.infer(req, deadline - time.monotonic())
                if resp is None:
                    resp = session.unary(self._stub.Infer, req, timeout=deadline - time.monotonic())
                return Answer(resp.output, resp.node, resp.attempts)
            except CoordinatorError as e:
                failures += 1
                delay = retry_delay(e, failures, deadline) if retry else None
                if delay is None:
                    raise
                time.sleep(delay)

    def infer(
        self,
        endpoint_id: str,
        tensors: Mapping[str, torch.Tensor] | bytes,
        *,
        timeout_s: float | None = None,
        retry: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Run the endpoint's model on these tensors (rows on dim 0); returns its outputs."""
        from tensorgrid.serving.tensors import tensors_from_bytes

        answer = self.infer_bytes(endpoint_id, as_bytes(tensors), timeout_s=timeout_s, retry=retry)
        return tensors_from_bytes(answer.output, name="answer")

    def generate(
        self, endpoint_id: str, prompt: Sequence[int], *, seed: int = 0, timeout_s: float | None = None
    ) -> Iterator[builtins.list[int]]:
        """Decode after `prompt` on a generation endpoint, yielding new tokens as the replica makes
        them. The same seed gives the same tokens. Raises CoordinatorError (ABORTED) when the
        replica's final answer does not hold the tokens streamed: discard those and call again."""
        timeout = timeout_s or DEFAULT_TIMEOUT_S * 6
        req = serving_pb2.InferRequest(
            endpoint_id=endpoint_id, input=prompt_bytes(prompt), timeout_ms=int(timeout * 1000), seed=seed
        )
        stream = self._client.session.authed(lambda md: self._stub.Generate(req, metadata=md, timeout=timeout))
        try:
            for chunk in stream:
                if chunk.tokens:
                    yield list(chunk.tokens)
                if chunk.done:
                    return
        except grpc.RpcError as e:
            raise wrap(e) from None
