"""A simulated serving node for the router's unit tests: it drains its link's outbox and
answers like an honest node (ready replicas, one reply per request, one signed receipt per
request as its own micro-batch), unless told to misbehave."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from coordinator.services.serving.hooks import ServedBatch
from coordinator.services.serving.model import NodeLink
from coordinator.services.serving.router import Router
from tensorgrid import serde
from tensorgrid.crypto import Signer, sign_receipt
from tensorgrid.serving import batch_receipt
from tensorgrid.spec import EndpointSpec
from tensorgrid.types import BlobRef, Domain, ErrorKind, TaskError
from tensorgrid.v1 import serving_pb2

DOMAIN = Domain("TensorGrid", "1", 31337, "0x" + "11" * 20)
MODEL = BlobRef("ab" * 32, 100)


def spec(**kw: object) -> EndpointSpec:
    base: dict[str, object] = dict(model=MODEL, min_replicas=1, max_replicas=2, max_batch=2, max_queue=2)
    base.update(kw)
    return EndpointSpec(**base)  # type: ignore[arg-type]


class Recorder:
    """Accounting that remembers what it was asked to pay."""

    def __init__(self, remaining: int | None = None) -> None:
        self.batches: list[ServedBatch] = []
        self.left = remaining

    def record(self, batch: ServedBatch) -> bool:
        self.batches.append(batch)
        return False

    def record_counted(self, endpoint_id: str, node: str, task_id: str, answered: int) -> bool:
        return False

    def remaining(self, endpoint_id: str) -> int | None:
        return self.left

    def spent_wei(self, endpoint_id: str) -> int:
        return 0

    def void(self, batch: ServedBatch, reason: str) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def refresh(self, endpoint_ids: list[str]) -> None:
        return None

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


@dataclass
class SimNode:
    router: Router
    signer: Signer = field(default_factory=Signer.generate)
    ready: bool = True  # answer assignments with ready
    answer: bool = True  # answer requests
    delay_s: float = 0.0
    receipt_tamper: str = ""  # "", "digest", "signature", "skip"
    fail: str = ""  # an ErrorKind value: answer every request with that error instead
    link: NodeLink | None = None
    requests: list[serving_pb2.ServeRequest] = field(default_factory=list)
    downs: list[list[int]] = field(default_factory=list)  # the request ids of each message that held any
    assigned: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    endpoint_of: dict[str, str] = field(default_factory=dict)
    counted: list[serving_pb2.BatchCounted] = field(default_factory=list)  # as the coordinator sent them
    batch: int = 0
    task: asyncio.Task[None] | None = None

    def connect(
        self,
        max_replicas: int = 2,
        device: str = "cpu",
        warm: tuple[str, ...] = (),
        counted: tuple[serving_pb2.BatchCounted, ...] = (),
    ) -> NodeLink:
        self.link = self.router.connect(self.signer.address, device, 8 << 30, max_replicas, warm, counted)
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self.link

    def disconnect(self) -> None:
        assert self.link is not None and self.task is not None
        self.task.cancel()
        self.router.disconnect(self.link)

    async def _run(self) -> None:
        assert self.link is not None
        link = self.link
        while (msg := await link.outbox.get()) is not None:
            self.counted.extend(msg.counted)
            which = msg.WhichOneof("msg")
            if which == "assign":
                self.assigned.append(msg.assign.replica_id)
                self.endpoint_of[msg.assign.replica_id] = msg.assign.endpoint_id
                if self.ready:
                    self.up(state=serving_pb2.ReplicaState(replica_id=msg.assign.replica_id, ready=True))
            elif which == "release":
                self.released.append(msg.release.replica_id)
            if msg.requests:
                self.downs.append([r.request_id for r in msg.requests])
            for request in msg.requests:
                self.requests.append(request)
                if self.answer:
                    asyncio.get_running_loop().create_task(self._answer(request))

    def up(self, **kw: object) -> None:
        assert self.link is not None
        self.router.on_up(self.link, serving_pb2.ServeUp(**kw))  # type: ignore[arg-type]

    async def _answer(self, req: serving_pb2.ServeRequest) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            error = serving_pb2.ServeReply(request_id=req.request_id, done=True, batch=0)
            error.error.CopyFrom(serde.error_to_pb(TaskError(ErrorKind(self.fail), f"{self.fail} (simulated)")))
            self.up(replies=[error])
            return
        output = b"out:" + req.input[-8:]
        self.batch += 1
        batch = self.batch
        self.up(replies=[serving_pb2.ServeReply(request_id=req.request_id, output=output, done=True, batch=batch)])
        self.send_receipt(req.replica_id, batch, [req.request_id], [req.input], [output])

    def send_receipt(
        self, replica_id: str, batch: int, ids: list[int], inputs: list[bytes], outputs: list[bytes]
    ) -> None:
        if self.receipt_tamper == "skip":
            return
        if self.receipt_tamper == "digest":
            outputs = [o + b"x" for o in outputs]
        self.up(receipts=[self.receipt(replica_id, batch, ids, inputs, outputs)])

    def receipt(
        self, replica_id: str, batch: int, ids: list[int], inputs: list[bytes], outputs: list[bytes]
    ) -> serving_pb2.BatchReceipt:
        """The batch's signed receipt (wrongly signed when told to tamper with the signature)."""
        receipt = batch_receipt(self.endpoint_of[replica_id], replica_id, batch, ids, inputs, outputs)
        signer = Signer.generate() if self.receipt_tamper == "signature" else self.signer
        signed = sign_receipt(signer, DOMAIN, receipt)
        return serving_pb2.BatchReceipt(
            replica_id=replica_id, batch=batch, request_ids=ids, receipt=serde.receipt_to_pb(signed)
        )
