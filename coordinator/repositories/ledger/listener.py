"""The ledger's side of the outbox: what each confirmed or failed chain write means for the ledger."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import Connection, update

from coordinator.db import schema as s
from coordinator.repositories.ledger import epochs, escrow
from coordinator.repositories.ledger import outbox as ob
from coordinator.repositories.ledger.slashing import SLASH_ACTIONS, SlashListener
from tensorgrid.chain.errors import ContractReverted

if TYPE_CHECKING:
    from tensorgrid.chain.client import ChainClient

log = logging.getLogger("tensorgrid.coordinator.ledger")


class LedgerListener:
    """The ledger's side of the outbox: epochs confirm, failed posts are unwound, slashes recorded.

    `chain` (optional) lets a confirmed slash record the amount its Slashed event says was taken.
    """

    def __init__(self, chain: ChainClient | None = None) -> None:
        self.slashes = SlashListener(chain)

    def on_confirmed(self, conn: Connection, item: ob.OutboxItem, now_ms: int) -> None:
        if item.action in SLASH_ACTIONS:
            self.slashes.on_confirmed(conn, item, now_ms)
        if item.action == "post_root":
            conn.execute(
                update(s.epochs)
                .where((s.epochs.c.epoch == int(item.payload["epoch"])) & (s.epochs.c.outbox_key == item.key))
                .values(state="confirmed", tx_hash=item.tx_hash, updated_ms=now_ms)
            )

    def on_failed(self, conn: Connection, item: ob.OutboxItem, error: ContractReverted, now_ms: int) -> bool:
        if item.action in SLASH_ACTIONS:
            return self.slashes.on_failed(conn, item, error, now_ms)
        if item.action == escrow.LOCK:
            return escrow.on_lock_failed(conn, item, error, now_ms)
        if item.action != "post_root":
            log.error("%s failed and is dropped: %s", item.key, error)
            return True
        epoch = int(item.payload["epoch"])
        conn.execute(
            update(s.epochs)
            .where(s.epochs.c.epoch == epoch)
            .values(state="failed", error=str(error)[:2000], updated_ms=now_ms)
        )
        job = epochs.job_named_by(error)
        if job is None:
            log.error("epoch %s failed: %s; the outbox halts until resolve_failed_epoch(%s)", epoch, error, epoch)
            return False
        epochs.unwind_and_repost(conn, item, now_ms, void_jobs=[job])
        return True
