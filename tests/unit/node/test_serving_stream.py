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
