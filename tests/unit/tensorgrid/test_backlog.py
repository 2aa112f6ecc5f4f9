"""tensorgrid.backlog: a server stream's queued messages, read until it goes quiet (a real gRPC server)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from tensorgrid.backlog import backlog

METHOD = "/test.Backlog/Follow"


def _serve(ended: threading.Event, fail: bool) -> tuple[grpc.Server, int]:
    def follow(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from (b"a", b"b", b"c")  # the record, at once
        if fail:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        while context.is_active():  # then follows live: nothing more comes
            time.sleep(0.05)
        ended.set()

    handler = grpc.method_handlers_generic_handler(
        "test.Backlog", {"Follow": grpc.unary_stream_rpc_method_handler(follow)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_the_record_is_read_and_the_live_stream_cancelled_once_quiet() -> None:
    ended = threading.Event()
    server, port = _serve(ended, fail=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(METHOD)(b"", timeout=30)
            start = time.monotonic()
            assert list(backlog(call, 0.3)) == [b"a", b"b", b"c"]
            took = time.monotonic() - start
            assert took < 10, took  # not the call's 30 s deadline
            assert ended.wait(10), "the server's stream was not cancelled"
    finally:
        server.stop(0)


def test_an_error_the_stream_ends_with_is_raised() -> None:
    server, port = _serve(threading.Event(), fail=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(METHOD)(b"", timeout=30)
            got = []
            with pytest.raises(grpc.RpcError) as e:
                for message in backlog(call, 5.0):
                    got.append(message)
            assert got == [b"a", b"b", b"c"]
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    finally:
        server.stop(0)
