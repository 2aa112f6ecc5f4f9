"""What the leasing slot (node.slot), the blob fetcher (node.fetching) and the result hand-in
(node.handin) use of the node's agent: node.agent.Agent has all of it. Typed here as protocols
so that those modules never import the agent that composes them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import grpc

from node.cache import BlobCache
from node.config import AgentConfig
from node.pending import PendingResults
from tensorgrid.nodeclient import NodeClient

if TYPE_CHECKING:
    from node.metrics import NodeMetrics

Cancel = Callable[[], Awaitable[None]]  # stops a held lease's work (the slot's, or nothing yet)


class Host(Protocol):
    """The agent's state and session, as the slot, the fetcher and the hand-in share them."""

    config: AgentConfig
    client: NodeClient
    cache: BlobCache
    metrics: NodeMetrics | None
    pending: PendingResults
    draining: asyncio.Event
    completed: int
    _registered: asyncio.Event
    # Leases held: task_id → (attempt, how to stop it if the coordinator revokes it).
    _active: dict[str, tuple[int, Cancel]]
    _revoked: set[tuple[str, int]]  # leases of _active the coordinator took back
    _busy: int  # lease calls refused in a row as RESOURCE_EXHAUSTED

    async def _sleep_or_drain(self, seconds: float) -> None: ...

    async def _on_rpc_error(self, e: grpc.aio.AioRpcError, what: str) -> None: ...
