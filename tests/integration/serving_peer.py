"""A test-only serving node: registers over real gRPC, holds NodeService.Serve open and answers
every request with its own input (deterministic), signing one receipt per request. It stands
in for node/serving to test the coordinator's router end to end; `behaviour` makes it
misbehave: "hold" (never answer), "forge" (receipts signed by another key), "digest"
(receipts over other bytes), "phantom" (replies to request ids it was never sent)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import grpc

from tensorgrid import serde
from tensorgrid.crypto import Signer, sign_receipt
from tensorgrid.nodeclient import NodeClient
from tensorgrid.serving import batch_receipt
from tensorgrid.types import Capabilities
from tensorgrid.v1 import serving_pb2

CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)


class ServePeer:
    def __init__(self, target: str, behaviour: str = "honest", max_replicas: int = 2) -> None:
        self.target = target
        self.behaviour = behaviour
        self.max_replicas = max_replicas
        self.signer = Signer.generate()
        self.ready_replicas: list[str] = []
        self.requests = 0
        self.ended = threading.Event()  # the coordinator ended the stream (or stop was called)
        self._loop = asyncio.new_event_loop()
        self._call: Any = None
        self._endpoint_of: dict[str, str] = {}
        self.assigns: dict[str, serving_pb2.ReplicaAssign] = {}  # by replica id (data port, token)
        self._batch = 0
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)
        self._started = threading.Event()

    @property
    def address(self) -> str:
        return self.signer.address

    def start(self) -> ServePeer:
        self._thread.start()
        assert self._started.wait(30), "the serving peer did not register"
        return self

    def stop(self) -> None:
        """Break the stream, as a node that goes away."""
        if self._call is not None:
            self._loop.call_soon_threadsafe(self._call.cancel)
        self._thread.join(10)

    async def _main(self) -> None:
        client = NodeClient(self.target, self.signer)
        try:
            await client.register(CPU)
            assert client.domain is not None
            self.domain = client.domain
            self._call = call = client.stub.Serve(metadata=client.metadata)
            await call.write(serving_pb2.ServeUp(hello=serving_pb2.ServeHello(max_replicas=self.max_replicas)))
            self._started.set()
            while True:
                down = await call.read()
                if down is grpc.aio.EOF:
                    break
                await self._handle(call, down)
        # ended by the coordinator, also between two writes of one answer (an abuse test's aim)
        except (asyncio.CancelledError, asyncio.InvalidStateError, grpc.aio.AioRpcError):
            pass
        finally:
            self.ended.set()
            self._started.set()
            await client.close()

    async def _handle(self, call: Any, down: serving_pb2.ServeDown) -> None:
        which = down.WhichOneof("msg")
        if which == "assign":
            rid = down.assign.replica_id
            self._endpoint_of[rid] = down.assign.endpoint_id
            self.assigns[rid] = down.assign
            await call.write(serving_pb2.ServeUp(state=serving_pb2.ReplicaState(replica_id=rid, ready=True)))
            self.ready_replicas.append(rid)
        for request in down.requests:
            self.requests += 1
            if self.behaviour != "hold":
                await self._answer(call, request)

    async def _answer(self, call: Any, req: serving_pb2.ServeRequest) -> None:
        self._batch += 1
        rid, output = req.request_id, bytes(req.input)
        if self.behaviour == "phantom":
            rid = req.request_id + 1000  # never sent
        await call.write(
            serving_pb2.ServeUp(
                replies=[serving_pb2.ServeReply(request_id=rid, output=output, done=True, batch=self._batch)]
            )
        )
        signed_output = output + b"!" if self.behaviour == "digest" else output
        receipt = batch_receipt(
            self._endpoint_of[req.replica_id], req.replica_id, self._batch, [rid], [bytes(req.input)], [signed_output]
        )
        signer = Signer.generate() if self.behaviour == "forge" else self.signer
        pb = serde.receipt_to_pb(sign_receipt(signer, self.domain, receipt))
        await call.write(
            serving_pb2.ServeUp(
                receipts=[
                    serving_pb2.BatchReceipt(
                        replica_id=req.replica_id, batch=self._batch, request_ids=[rid], receipt=pb
                    )
                ]
            )
        )


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
