"""What the router hands to accounting and to the sampled checks, and what it asks of them.

The router (router.py) owns endpoints, replicas and requests in memory. After each
micro-batch whose receipt verified, it gives the batch to `Accounting.record` (pay the node,
in batches, from the endpoint's escrow) and to `Checks.after_batch` (draw requests to run
again). A check that proves a node wrong calls the router's `on_caught`, and accounting
voids the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from tensorgrid.spec import EndpointSpec
from tensorgrid.types import Receipt


@dataclass(frozen=True)
class ServedRequest:
    request_id: int
    input: bytes  # what the coordinator sent (safetensors)
    output: bytes  # what the node answered; b"" when the request failed
    ok: bool
    seed: int = 0  # generation


@dataclass(frozen=True)
class ServedBatch:
    """One micro-batch of one replica, its receipt checked against the bytes both sides saw."""

    endpoint_id: str
    replica_id: str
    node: str  # the replica's node (normalized address)
    device_kind: str  # "cpu" or "cuda": which tolerance its answers are compared with
    batch: int
    receipt: Receipt  # signed by `node`
    requests: tuple[ServedRequest, ...]

    @property
    def answered(self) -> int:
        return sum(1 for r in self.requests if r.ok)


# Run one request's input again on a ready replica whose node is not `exclude_node`:
# (endpoint_id, input, seed, exclude_node) -> (node, output), or None when no such replica is ready.
Rerun = Callable[[str, bytes, int, str], Awaitable[tuple[str, bytes] | None]]
# The router's answer to a node proven wrong: release its replicas of the endpoint, bar it from it.
OnCaught = Callable[[ServedBatch, str], None]


class Accounting(Protocol):
    def record(self, batch: ServedBatch) -> None:
        """Count the batch's answered requests for its node (in memory; flushed later)."""

    def remaining(self, endpoint_id: str) -> int | None:
        """Requests the endpoint's budget still pays for (None: no cap)."""

    def spent_wei(self, endpoint_id: str) -> int:
        """Wei credited to nodes for this endpoint, flushed or not."""

    def void(self, batch: ServedBatch, reason: str) -> None:
        """A caught batch goes unpaid (taken back if it was already credited)."""

    async def flush(self) -> None:
        """Write what was counted since the last flush (one transaction)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Flush periodically until stop is set, then once more."""


class Checks(Protocol):
    def after_batch(self, batch: ServedBatch, spec: EndpointSpec) -> None:
        """Draw the batch's requests to check (spec.check_rate) and start their checks; never blocks."""

    def counts(self, endpoint_id: str) -> tuple[int, int]:
        """(requests checked, requests caught) of the endpoint."""


class NoAccounting:
    """Accounting for a grid without prices: nothing is paid, nothing is capped."""

    def record(self, batch: ServedBatch) -> None:
        return None

    def remaining(self, endpoint_id: str) -> int | None:
        return None

    def spent_wei(self, endpoint_id: str) -> int:
        return 0

    def void(self, batch: ServedBatch, reason: str) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


class NoChecks:
    def after_batch(self, batch: ServedBatch, spec: EndpointSpec) -> None:
        return None

    def counts(self, endpoint_id: str) -> tuple[int, int]:
        return (0, 0)
