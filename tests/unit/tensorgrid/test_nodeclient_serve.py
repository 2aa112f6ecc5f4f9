"""NodeClient.serve: the Serve stream on the serve port the coordinator named, else over gRPC;
a port that could not be reached is left alone for a while."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tensorgrid import nodeclient
from tensorgrid.crypto import Signer
from tensorgrid.nodeclient import NodeClient
from tensorgrid.serving.wire import FramedServeCall


class _Stub:
    def Serve(self, up: Any, metadata: Any = None) -> str:  # noqa: N802 -- the gRPC method's name
        return "grpc call"


def test_serve_uses_the_named_port_unless_told_not_to_or_it_failed_lately(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        client = NodeClient("127.0.0.1:7070", Signer.generate(), serve_port=True)
        client.stub = _Stub()  # type: ignore[assignment]
        try:
            assert client.serve(None) == "grpc call"  # type: ignore[arg-type]  # no port named yet
            client.serve_ports["127.0.0.1:7070"] = 7072
            call = client.serve(None)  # type: ignore[arg-type]
            assert isinstance(call, FramedServeCall) and (call.host, call.port, call.tls) == ("127.0.0.1", 7072, None)
            call._unreachable(OSError("refused"))  # what a failed connection reports
            assert client.serve(None) == "grpc call"  # type: ignore[arg-type]
            now = nodeclient.time.monotonic() + nodeclient.PORT_RETRY_S + 1
            monkeypatch.setattr(nodeclient.time, "monotonic", lambda: now)
            assert isinstance(client.serve(None), FramedServeCall)  # type: ignore[arg-type]  # tried again
            client.use_serve_port = False  # --serve-over grpc
            assert client.serve(None) == "grpc call"  # type: ignore[arg-type]
        finally:
            await client.close()

    asyncio.run(scenario())
