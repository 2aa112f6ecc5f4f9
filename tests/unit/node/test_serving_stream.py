"""The Serve loop's sending side: a receipt rides with the next replies, or goes alone soon after."""

from __future__ import annotations

import asyncio

from node.serving import stream
from node.serving.stream import ServeLoop
from tensorgrid.v1 import serving_pb2


def _loop() -> ServeLoop:
    return ServeLoop(None, 1, lambda send: None, asyncio.Event(), asyncio.Event())  # type: ignore[arg-type]


def _reply(rid: int) -> serving_pb2.ServeUp:
    return serving_pb2.ServeUp(replies=[serving_pb2.ServeReply(request_id=rid, done=True, batch=rid)])


def _receipt(batch: int) -> serving_pb2.ServeUp:
    return serving_pb2.ServeUp(receipts=[serving_pb2.BatchReceipt(replica_id="r", batch=batch)])


def test_a_receipt_rides_with_the_next_replies() -> None:
    async def scenario() -> list[serving_pb2.ServeUp]:
        loop = _loop()
        loop.send(_reply(1))
        loop.send(_receipt(1))
        loop.send(_reply(2))  # carries batch 1's receipt
        return [loop._outgoing.get_nowait() for _ in range(loop._outgoing.qsize())]

    sent = asyncio.run(scenario())
    assert [[r.request_id for r in m.replies] for m in sent] == [[1], [2]]
    assert [[r.batch for r in m.receipts] for m in sent] == [[], [1]]


def test_a_receipt_with_no_replies_after_it_goes_alone_soon(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(stream, "RECEIPT_DELAY_S", 0.01)

    async def scenario() -> list[serving_pb2.ServeUp]:
        loop = _loop()
        loop.send(_reply(1))
        loop.send(_receipt(1))
        loop.send(_receipt(2))
        assert loop._outgoing.qsize() == 1  # the receipts wait
        await asyncio.sleep(0.05)
        return [loop._outgoing.get_nowait() for _ in range(loop._outgoing.qsize())]

    sent = asyncio.run(scenario())
    assert [[r.batch for r in m.receipts] for m in sent] == [[], [1, 2]]


class _Replica:
    def __init__(self) -> None:
        self.signed = 0

    def sign_receipts(self) -> None:
        self.signed += 1


def test_receipts_are_signed_once_replies_are_written_not_before() -> None:
    async def scenario() -> tuple[int, int, int]:
        loop = _loop()
        replica = _Replica()
        loop.replicas["r"] = replica  # type: ignore[assignment]
        loop._written(_receipt(1))  # a message without replies: nothing answered was sent
        await asyncio.sleep(0)
        before = replica.signed
        loop._written(_reply(1))
        at_once = replica.signed  # not in the writer's way: a moment later
        await asyncio.sleep(0)
        return before, at_once, replica.signed

    assert asyncio.run(scenario()) == (0, 0, 1)


def test_batches_the_coordinator_counted_go_into_the_next_hello_for_a_while(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """If the coordinator replica dies before writing them, the next one is told (and pays them once)."""
    now = [100.0]
    monkeypatch.setattr(stream.time, "monotonic", lambda: now[0])
    loop = _loop()
    first = serving_pb2.BatchCounted(endpoint_id="e", task_id="t1", answered=2, tag=b"x")
    loop._dispatch(serving_pb2.ServeDown(counted=[first]))
    now[0] += stream.COUNTED_HOLD_S / 2
    loop._dispatch(serving_pb2.ServeDown(counted=[serving_pb2.BatchCounted(endpoint_id="e", task_id="t2")]))
    assert [c.task_id for c in loop._hello().hello.counted] == ["t1", "t2"]
    assert loop._hello().hello.max_replicas == 1
    now[0] += stream.COUNTED_HOLD_S / 2 + 0.1  # t1 is written by now (once a second)
    assert [c.task_id for c in loop._hello().hello.counted] == ["t2"]
