"""The Serve streams' writer: what queued while a write was in flight goes out as one message."""

from __future__ import annotations

import asyncio

from tensorgrid.serving import coalesce
from tensorgrid.serving.coalesce import coalesced
from tensorgrid.v1 import serving_pb2


def _req(i: int, size: int = 4) -> serving_pb2.ServeDown:
    return serving_pb2.ServeDown(requests=[serving_pb2.ServeRequest(request_id=i, input=b"x" * size)])


def _bytes(down: serving_pb2.ServeDown) -> int:
    return sum(len(r.input) for r in down.requests)


def _drain(queue: asyncio.Queue[serving_pb2.ServeDown | None]) -> list[serving_pb2.ServeDown]:
    async def run() -> list[serving_pb2.ServeDown]:
        return [m async for m in coalesced(queue, ("requests",), _bytes)]

    return asyncio.run(run())


def test_queued_requests_merge_in_order_and_control_messages_stay_whole() -> None:
    queue: asyncio.Queue[serving_pb2.ServeDown | None] = asyncio.Queue()
    for i in (1, 2, 3):
        queue.put_nowait(_req(i))
    queue.put_nowait(serving_pb2.ServeDown(cancel=serving_pb2.ServeCancel(request_id=2)))
    for i in (4, 5):
        queue.put_nowait(_req(i))
    queue.put_nowait(None)
    out = _drain(queue)
    assert [[r.request_id for r in m.requests] for m in out] == [[1, 2, 3], [], [4, 5]]
    assert out[1].WhichOneof("msg") == "cancel" and out[1].cancel.request_id == 2


def test_merging_stops_at_the_payload_cap(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(coalesce, "MAX_MERGED_BYTES", 10)
    queue: asyncio.Queue[serving_pb2.ServeDown | None] = asyncio.Queue()
    for i in range(1, 6):
        queue.put_nowait(_req(i, size=4))
    queue.put_nowait(None)
    assert [[r.request_id for r in m.requests] for m in _drain(queue)] == [[1, 2, 3], [4, 5]]


def test_the_end_marker_behind_a_merge_still_ends_the_stream() -> None:
    queue: asyncio.Queue[serving_pb2.ServeDown | None] = asyncio.Queue()
    queue.put_nowait(_req(1))
    queue.put_nowait(None)
    queue.put_nowait(_req(2))  # after the end: never sent
    assert [[r.request_id for r in m.requests] for m in _drain(queue)] == [[1]]


def test_a_message_is_reported_written_only_once_the_stream_asks_for_the_next() -> None:
    async def scenario() -> list[str]:
        events: list[str] = []
        queue: asyncio.Queue[serving_pb2.ServeDown | None] = asyncio.Queue()
        for i in (1, 2):
            queue.put_nowait(_req(i))
        queue.put_nowait(serving_pb2.ServeDown(cancel=serving_pb2.ServeCancel(request_id=1)))
        queue.put_nowait(None)
        stream = coalesced(queue, ("requests",), _bytes, lambda m: events.append(f"written {_name(m)}"))
        async for msg in stream:
            events.append(f"writing {_name(msg)}")  # a write: until it returns, msg is not written
        return events

    assert asyncio.run(scenario()) == [
        "writing [1, 2]",
        "written [1, 2]",
        "writing cancel",
        "written cancel",
    ]


def _name(m: serving_pb2.ServeDown) -> str:
    return m.WhichOneof("msg") or str([r.request_id for r in m.requests])
