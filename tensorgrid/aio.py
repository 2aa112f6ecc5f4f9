"""asyncio calls to endpoints: the twin of tensorgrid.endpoints' infer and generate.

    with Client(target, signer) as c:
        async with AsyncEndpoints(c) as endpoints:
            out = await endpoints.infer(endpoint_id, {"x": x})
            async for tokens in endpoints.generate(decoder_id, [5, 17, 3], seed=7):
                ...

It shares the Client's key and session (opened, when needed, in a thread: the only blocking
part) and has its own grpc.aio channel, so many calls run concurrently on one event loop.
Refusals and retries follow tensorgrid.endpoints.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from tensorgrid.endpoints import DEFAULT_TIMEOUT_S, Answer, as_bytes, prompt_bytes, retry_delay
from tensorgrid.infer_stream import InferStream
from tensorgrid.session import CoordinatorError, Metadata, unauthenticated, wrap
from tensorgrid.tls import open_channel
from tensorgrid.v1 import serving_pb2, submit_pb2_grpc

if TYPE_CHECKING:
    import torch

    from tensorgrid.client import Client


class AsyncEndpoints:
    """Endpoint calls on an event loop, for one Client's key."""

    def __init__(self, client: Client) -> None:
        self._session = client.session
        self._channel = open_channel(client.target, client.tls, aio=True)
        self._stub = submit_pb2_grpc.SubmitterServiceStub(self._channel)
        self._stream = InferStream(self._stub, self._metadata)

    async def close(self) -> None:
        await self._stream.close()
        await self._channel.close()

    async def __aenter__(self) -> AsyncEndpoints:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _metadata(self, renew: bool = False) -> Metadata:
        if renew:
            self._session.forget()
        if self._session.fresh:
            return self._session.metadata()
        return await asyncio.to_thread(self._session.metadata)

    async def _unary(self, method: Any, request: Any, timeout: float) -> Any:
        """One call; a refused session is renewed and the call tried once more."""
        try:
            return await method(request, metadata=await self._metadata(), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            if not unauthenticated(e):
                raise wrap(e) from None
        try:
            return await method(request, metadata=await self._metadata(renew=True), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise wrap(e) from None

    async def infer_bytes(
        self, endpoint_id: str, data: bytes, *, timeout_s: float | None = None, seed: int = 0, retry: bool = True
    ) -> Answer:
        """Send one request (safetensors bytes) on the open InferStream (a unary Infer when it
        cannot take it); retried after the coordinator's hint when the endpoint is full or
        warming, until the call's deadline."""
        timeout = timeout_s or DEFAULT_TIMEOUT_S
        deadline = time.monotonic() + timeout
        req = serving_pb2.InferRequest(
            endpoint_id=endpoint_id, input=data, timeout_ms=int(timeout * 1000), seed=seed, request_key=os.urandom(16)
        )  # sent again after a broken stream or a refusal, it is answered once, not run twice
        failures = 0
        while True:
            try:
                resp = await self._stream.infer(req, deadline - time.monotonic())
                if resp is None:  # the stream could not carry it (tensorgrid.infer_stream)
                    resp = await self._unary(self._stub.Infer, req, deadline - time.monotonic())
                return Answer(resp.output, resp.node, resp.attempts)
            except CoordinatorError as e:
                failures += 1
                delay = retry_delay(e, failures, deadline) if retry else None
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    async def infer(
        self,
        endpoint_id: str,
        tensors: Mapping[str, torch.Tensor] | bytes,
        *,
        timeout_s: float | None = None,
        retry: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Run the endpoint's model on these tensors; returns its outputs."""
        from tensorgrid.serving.tensors import tensors_from_bytes

        answer = await self.infer_bytes(endpoint_id, as_bytes(tensors), timeout_s=timeout_s, retry=retry)
        return tensors_from_bytes(answer.output, name="answer")

    async def generate(
        self, endpoint_id: str, prompt: Sequence[int], *, seed: int = 0, timeout_s: float | None = None
    ) -> AsyncIterator[list[int]]:
        """New tokens after `prompt`, as the replica decodes them (same seed, same tokens); raises
        (ABORTED) when its final answer does not hold the tokens streamed: discard them, call again."""
        timeout = timeout_s or DEFAULT_TIMEOUT_S * 6
        req = serving_pb2.InferRequest(
            endpoint_id=endpoint_id, input=prompt_bytes(prompt), timeout_ms=int(timeout * 1000), seed=seed
        )
        call = self._stub.Generate(req, metadata=await self._metadata(), timeout=timeout)
        try:
            async for chunk in call:
                if chunk.tokens:
                    yield list(chunk.tokens)
                if chunk.done:
                    return
        except grpc.aio.AioRpcError as e:
            raise wrap(e) from None
        finally:
            call.cancel()
