"""Checks' reruns waiting for their micro-batch's receipt.

A rerun is an ordinary request on a node's Serve stream (Router.rerun); its answer comes back
as any other, but a check can only blame or clear a node with a verified receipt of the batch
that carried it. The waits are kept here by (replica id, request id): a verified batch marks
the reruns it carries (unpaid, never drawn for a check: checks never recurse) and hands each
waiter that batch; a refused or overdue receipt hands it None (nothing to slash with).
"""

from __future__ import annotations

import asyncio
import dataclasses

from coordinator.services.serving.hooks import ServedBatch

Key = tuple[str, int]  # (replica id, request id)


class RerunWaits:
    def __init__(self) -> None:
        self._waits: dict[Key, asyncio.Future[ServedBatch | None]] = {}

    def __bool__(self) -> bool:
        """Any rerun waiting: the hot path tests this and pays nothing more when none is."""
        return bool(self._waits)

    def add(self, key: Key) -> asyncio.Future[ServedBatch | None]:
        """Wait for the batch of this request; register before its reply is awaited, since the
        receipt may follow the reply at once."""
        waiter: asyncio.Future[ServedBatch | None] = asyncio.get_running_loop().create_future()
        self._waits[key] = waiter
        return waiter

    def unreceipted(self, key: Key) -> None:
        """No verified receipt came for the rerun (refused, or overdue)."""
        waiter = self._waits.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def mark(self, batch: ServedBatch) -> ServedBatch:
        """The batch with its reruns marked; their waiters get it."""
        keys = [(batch.replica_id, r.request_id) for r in batch.requests]
        if not any(k in self._waits for k in keys):
            return batch
        requests = tuple(
            dataclasses.replace(r, rerun=True) if k in self._waits else r
            for r, k in zip(batch.requests, keys, strict=True)
        )
        marked = dataclasses.replace(batch, requests=requests)
        for k in keys:
            waiter = self._waits.pop(k, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(marked)
        return marked
