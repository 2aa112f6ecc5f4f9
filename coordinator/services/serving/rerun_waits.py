"""Checks' reruns waiting for their micro-batch's receipt.

A rerun is an ordinary request on a node's Serve stream (Router.rerun); its answer comes back
as any other, but a check can only blame or clear a node with a verified receipt of the batch
that carried it. The waits are kept here by call, found by its (replica id, request id) as it is
when the receipt comes (a held rerun's id changes as it goes down: riders.py): a verified batch
marks the reruns it carries (unpaid, never drawn for a check: checks never recurse) and hands each
waiter that batch; a refused or overdue receipt hands it None (nothing to slash with).
"""

from __future__ import annotations

import asyncio
import dataclasses

from coordinator.services.serving.hooks import ServedBatch
from coordinator.services.serving.model import Call

Key = tuple[str, int]  # (replica id, request id)
Waiter = asyncio.Future[ServedBatch | None]


class RerunWaits:
    def __init__(self) -> None:
        self._waits: dict[int, tuple[Call, Waiter]] = {}  # id(call) → the call and its waiter (few)

    def __bool__(self) -> bool:
        """Any rerun waiting: the hot path tests this and pays nothing more when none is."""
        return bool(self._waits)

    def add(self, call: Call) -> Waiter:
        """Wait for the batch of this rerun; register before its reply is awaited, since the
        receipt may follow the reply at once."""
        waiter: Waiter = asyncio.get_running_loop().create_future()
        self._waits[id(call)] = (call, waiter)
        return waiter

    def unreceipted(self, call: Call) -> None:
        """No verified receipt came for the rerun (refused, or overdue)."""
        self._settle(id(call), None)

    def refused(self, replica_id: str, request_ids: list[int]) -> None:
        """The receipt of a batch of these requests was refused: their reruns get None."""
        named = {(replica_id, rid) for rid in request_ids}
        for i in [i for i, (call, _) in self._waits.items() if _key(call) in named]:
            self._settle(i, None)

    def mark(self, batch: ServedBatch) -> ServedBatch:
        """The batch with its reruns marked; their waiters get it."""
        waits = {_key(call): i for i, (call, _) in self._waits.items()}
        keys = [(batch.replica_id, r.request_id) for r in batch.requests]
        if not any(k in waits for k in keys):
            return batch
        requests = tuple(
            dataclasses.replace(r, rerun=True) if k in waits else r for r, k in zip(batch.requests, keys, strict=True)
        )
        marked = dataclasses.replace(batch, requests=requests)
        for k in keys:
            if k in waits:
                self._settle(waits[k], marked)
        return marked

    def _settle(self, i: int, batch: ServedBatch | None) -> None:
        got = self._waits.pop(i, None)
        if got is not None and not got[1].done():
            got[1].set_result(batch)


def _key(call: Call) -> Key:
    return call.replica.replica_id, call.request_id
