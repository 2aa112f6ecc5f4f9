"""The persistent outbox queue: every chain write of the coordinator, in order, exactly once.

An action is enqueued in the same database transaction as the state change that calls for
it (an epoch, a finished job), under an idempotency key: enqueueing a key twice is a no-op.
One worker handles items strictly in id order, one at a time:

    pending --sign (nonce owned here)--> sent --receipt status 1--> confirmed
                                              --status 0 / revert--> failed

The signed raw transaction, its hash and nonce are committed (state `sent`) *before* the
broadcast. After a crash, a `sent` item is looked up by hash and, if not mined, the SAME
raw bytes are broadcast again: never re-signed, so it can be mined at most once. A revert
caught while estimating gas fails the item before anything is signed (no nonce used); a
revert mined on chain uses its nonce, which the next item's nonce accounts for.
RPC and connection errors leave the item where it was and retry it with exponential backoff.

A listener (the ledger) hears of each confirmation and failure inside the transaction that
records it; if it cannot resolve a failure, the item blocks the queue until someone does
(`unblock`). Run one worker per database: on PostgreSQL a session advisory lock makes
every other replica's worker stand by.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from coordinator.db import schema as s
from tensorgrid.chain.errors import ContractReverted

_ob = s.outbox
# Every action the worker (services.outbox) knows how to send; payload wei amounts are decimal strings.
ACTIONS = frozenset({"post_root", "record_result", "revoke_root", "slash", "execute_slash", "lock_job", "release_job"})


@dataclass(frozen=True)
class OutboxItem:
    id: int
    key: str
    action: str
    payload: dict[str, Any]
    state: str
    blocking: bool
    nonce: int | None
    tx_hash: str | None
    raw_tx: bytes | None
    attempts: int
    last_error: str
    next_try_ms: int


class OutboxListener(Protocol):
    """Hears of outcomes inside the transaction that records them (so its own writes are atomic with it)."""

    def on_confirmed(self, conn: Connection, item: OutboxItem, now_ms: int) -> None: ...

    def on_failed(self, conn: Connection, item: OutboxItem, error: ContractReverted, now_ms: int) -> bool:
        """Return True if the failure is dealt with; False makes the item block the queue."""
        ...


def enqueue(conn: Connection, key: str, action: str, payload: dict[str, Any], now_ms: int) -> bool:
    """Add an action in the caller's transaction; False (and nothing changes) if `key` exists."""
    if action not in ACTIONS:
        raise ValueError(f"unknown outbox action {action!r}")
    if conn.execute(select(_ob.c.id).where(_ob.c.key == key)).first() is not None:
        return False
    # Two replicas may queue the same key at once (both saw it missing): the second insert waits
    # for the first's transaction and then does nothing, instead of failing the caller's.
    ins = postgresql.insert(_ob) if conn.dialect.name == "postgresql" else sqlite.insert(_ob)
    done = conn.execute(
        ins.on_conflict_do_nothing(index_elements=[_ob.c.key])
        .values(
            key=key,
            action=action,
            payload=json.dumps(payload, sort_keys=True),
            state="pending",
            blocking=False,
            attempts=0,
            last_error="",
            next_try_ms=0,
            created_ms=now_ms,
            updated_ms=now_ms,
        )
        .returning(_ob.c.id)
    ).first()
    return done is not None


def supersede(conn: Connection, item_id: int, state: str, now_ms: int) -> None:
    """Retire an item that will not be sent as is, freeing its key for a replacement.

    Only for an item never signed (pending) or one that failed; it keeps its row for the record.
    """
    row = conn.execute(select(_ob.c.key, _ob.c.state).where(_ob.c.id == item_id)).one()
    if row.state not in ("pending", "failed"):
        raise ValueError(f"outbox item {item_id} is {row.state}: only pending or failed items can be superseded")
    conn.execute(
        update(_ob)
        .where(_ob.c.id == item_id)
        .values(key=f"{row.key}!{state}#{item_id}", state=state, blocking=False, updated_ms=now_ms)
    )


def unblock(conn: Connection, item_id: int, now_ms: int) -> None:
    """Let the queue go on past a failed item (after the cause was dealt with)."""
    conn.execute(update(_ob).where(_ob.c.id == item_id).values(blocking=False, updated_ms=now_ms))


def items(conn: Connection, *, states: tuple[str, ...] = (), after_id: int = 0) -> list[OutboxItem]:
    """Items in id order, optionally only those in `states` and after `after_id`."""
    q = select(_ob).where(_ob.c.id > after_id).order_by(_ob.c.id)
    if states:
        q = q.where(_ob.c.state.in_(states))
    return [_item(r) for r in conn.execute(q)]


def get_item(conn: Connection, key: str) -> OutboxItem | None:
    """The item enqueued under `key`, if any."""
    row = conn.execute(select(_ob).where(_ob.c.key == key)).first()
    return None if row is None else _item(row)


def _item(row: Any) -> OutboxItem:
    return OutboxItem(
        id=int(row.id),
        key=row.key,
        action=row.action,
        payload=json.loads(row.payload),
        state=row.state,
        blocking=bool(row.blocking),
        nonce=None if row.nonce is None else int(row.nonce),
        tx_hash=row.tx_hash,
        raw_tx=None if row.raw_tx is None else bytes(row.raw_tx),
        attempts=int(row.attempts),
        last_error=row.last_error,
        next_try_ms=int(row.next_try_ms),
    )


def head(conn: Connection) -> OutboxItem | None:
    """The first item not done: pending or sent, or a failed one still blocking the queue."""
    row = conn.execute(
        select(_ob)
        .where(or_(_ob.c.state.in_(("pending", "sent")), (_ob.c.state == "failed") & _ob.c.blocking))
        .order_by(_ob.c.id)
        .limit(1)
    ).first()
    return None if row is None else _item(row)
