"""NodeClient's long poll: its deadline outlasts the wait it asks the coordinator for, so an
idle node's LeaseTasks ends with the coordinator's answer, never DEADLINE_EXCEEDED."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tensorgrid.crypto import Signer
from tensorgrid.nodeclient import NodeClient
from tensorgrid.rpc import LEASE_WAIT_MS, MAX_LEASE_WAIT_MS
from tensorgrid.v1 import node_pb2


def test_a_long_poll_deadline_outlasts_the_wait_it_asks_for() -> None:
    async def scenario() -> dict[str, Any]:
        client = NodeClient("127.0.0.1:1", Signer.generate(), timeout=30.0)
        asked: dict[str, Any] = {}

        async def lease_tasks(request: node_pb2.LeaseRequest, **kwargs: Any) -> node_pb2.LeaseResponse:
            asked.update(kwargs, wait_ms=request.wait_ms)
            return node_pb2.LeaseResponse(retry_after_ms=500)

        client.stub = SimpleNamespace(LeaseTasks=lease_tasks)  # type: ignore[assignment]
        assert await client.lease(1, wait_ms=LEASE_WAIT_MS) == ([], 500)
        await client.close()
        return asked

    asked = asyncio.run(scenario())
    assert asked["wait_ms"] == LEASE_WAIT_MS
    # the coordinator holds a call at most MAX_LEASE_WAIT_MS, and answers within the client's timeout after
    assert asked["timeout"] == 30.0 + LEASE_WAIT_MS / 1000 > MAX_LEASE_WAIT_MS / 1000
