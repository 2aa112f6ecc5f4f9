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
    rerun: bool = False  # a check's rerun of another replica's request: unpaid, never drawn itself


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
        """Requests answered and paid for: a check's rerun is the grid's cost, not the submitter's."""
        return sum(1 for r in self.requests if r.ok and not r.rerun)

    def index_of(self, request_id: int) -> int:
        """The position of request `request_id` in the batch (ValueError if it is not in it)."""
        for i, r in enumerate(self.requests):
            if r.request_id == request_id:
                return i
        raise ValueError(f"request {request_id} is not in batch {self.batch}")


@dataclass(frozen=True)
class Reran:
    """Another replica's answer to a sampled request, and a way to its micro-batch's receipt."""

    node: str
    output: bytes
    request_id: int  # the rerun's id on that node's stream (its place in `receipted`'s batch)
    # Resolves to the rerun's micro-batch once its receipt verified (its requests marked
    # `rerun`), or to None when the receipt is refused or never comes (RECEIPT_WAIT_S).
    receipted: asyncio.Future[ServedBatch | None] | None = None


# Run one request's input again on a ready replica whose node is not `exclude_node`:
# (endpoint_id, input, seed, exclude_node) -> Reran, or None when no such replica answered.
Rerun = Callable[[str, bytes, int, str], Awaitable[Reran | None]]
# The router's answer to a node proven wrong: release its replicas of the endpoint, bar it from it.
OnCaught = Callable[[ServedBatch, str], None]


class Accounting(Protocol):
    def record(self, batch: ServedBatch) -> bool:
        """Count the batch's answered requests for its node (in memory; flushed later); True
        when a credit for it is now pending (what a node is told of: BatchCounted)."""

    def record_counted(self, endpoint_id: str, node: str, task_id: str, answered: int) -> bool:
        """Count a batch another replica verified (handed in by its node; credited once by task id)."""

    def remaining(self, endpoint_id: str) -> int | None:
        """Requests the endpoint's budget still pays for (None: no cap)."""

    def spent_wei(self, endpoint_id: str) -> int:
        """Wei credited to nodes for this endpoint, flushed or not."""

    def void(self, batch: ServedBatch, reason: str) -> None:
        """A caught batch goes unpaid (taken back if it was already credited)."""

    async def flush(self) -> None:
        """Write what was counted since the last flush (one transaction)."""

    async def refresh(self, endpoint_ids: list[str]) -> None:
        """Re-read what these endpoints' budgets have paid (other coordinator replicas' credits)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Flush periodically until stop is set, then once more."""


class Checks(Protocol):
    def after_batch(self, batch: ServedBatch, spec: EndpointSpec) -> None:
        """Draw the batch's requests to check (spec.check_rate) and start their checks; never blocks."""

    def counts(self, endpoint_id: str) -> tuple[int, int]:
        """(requests checked, requests caught) of the endpoint."""

    async def run(self, stop: asyncio.Event) -> None:
        """Write the checks' verdicts periodically until stop is set, then once more."""


class NoAccounting:
    """Accounting for a grid without prices: nothing is paid, nothing is capped."""

    def record(self, batch: ServedBatch) -> bool:
        return False

    def record_counted(self, endpoint_id: str, node: str, task_id: str, answered: int) -> bool:
        return False

    def remaining(self, endpoint_id: str) -> int | None:
        return None

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


class NoChecks:
    def after_batch(self, batch: ServedBatch, spec: EndpointSpec) -> None:
        return None

    def counts(self, endpoint_id: str) -> tuple[int, int]:
        return (0, 0)

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
