"""The outbox worker: takes queued chain writes to the chain, one at a time in id order.

The queue, its states and its idempotency keys are in coordinator.repositories.ledger.outbox;
this is the part that signs, broadcasts and waits (see the state machine written there).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, Engine, func, select, text, update
from web3.exceptions import ContractLogicError, TimeExhausted, TransactionNotFound, Web3RPCError

from coordinator.db import schema as s
from coordinator.repositories.ledger.outbox import OutboxItem, OutboxListener, head
from tensorgrid.chain import ChainClient, ChainError, ContractReverted
from tensorgrid.retry import backoff
from tensorgrid.types import Receipt

log = logging.getLogger("tensorgrid.coordinator.outbox")
_ob = s.outbox
_WORKER_LOCK = 0x74676F62  # "tgob": the PostgreSQL advisory lock of the one outbox worker
# The worker's lock session tells PostgreSQL to end it after LOCK_IDLE_S without a statement
# (idle_session_timeout), and the worker speaks on it at least every LOCK_PING_S (a quarter of
# LOCK_IDLE_S, if less) while it works: a replica that hangs (stopped, deadlocked, swapped out)
# loses the lock to another replica instead of halting every chain write for as long as its
# connection stays open.
LOCK_IDLE_S = 30.0
LOCK_PING_S = 1.0


# action -> (contract call, value in wei); payload wei amounts are decimal strings
ACTIONS: dict[str, Callable[[ChainClient, dict[str, Any]], tuple[Any, int]]] = {
    "post_root": lambda c, p: (  # each job charged its accepted tasks, at its reward per task
        c.post_root_call(int(p["epoch"]), p["root"], [(j, int(n)) for j, n in p["tasks"]]),
        0,
    ),
    "record_result": lambda c, p: (c.record_result_call(p["job_id"], p["result_hash"]), 0),
    "lock_job": lambda c, p: (c.lock_job_call(p["job_id"]), 0),
    "release_job": lambda c, p: (c.release_job_call(p["job_id"]), 0),
    "revoke_root": lambda c, p: (c.settlement.functions.revokeRoot(int(p["epoch"])), 0),
    "slash": lambda c, p: (  # a proposal; payload: see repositories.ledger.slashing.queue_slash
        c.propose_slash_call(
            Receipt(**p["receipt"], signature=bytes.fromhex(p["signature"])),
            int(p["amount"]),
            p["correct_output_hash"],
        ),
        0,
    ),
    "execute_slash": lambda c, p: (c.execute_slash_call(p["proposal_id"]), 0),
}


class _LockLost(Exception):
    """The worker's lock session ended (it was idle too long): another replica may own the queue."""


class _NonceTaken(Exception):
    """Another transaction was mined with this item's nonce: its signed tx can never be mined."""


class Outbox:
    """The worker that takes outbox items to the chain, one at a time in id order."""

    def __init__(
        self,
        engine: Engine,
        chain: ChainClient,
        *,
        listener: OutboxListener | None = None,
        receipt_timeout: float = 120.0,
        backoff_ms: tuple[int, int] = (500, 60_000),
        poll_s: float = 0.2,
        clock: Callable[[], float] = time.time,
        lock_idle_s: float = LOCK_IDLE_S,
    ) -> None:
        """lock_idle_s (PostgreSQL): a worker silent this long loses the queue to another replica."""
        self.engine = engine
        self.chain = chain
        self.listener = listener
        self.receipt_timeout = receipt_timeout
        self.backoff_ms = backoff_ms
        self.poll_s = poll_s
        self._clock = clock
        self.lock_idle_s = lock_idle_s
        self._lock_conn: Connection | None = None
        self._pinged = 0.0

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- worker --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Process items until `stop` is set; web3 calls run on a worker thread."""
        log.info("outbox worker started for %s", self.chain.address)
        try:
            while not stop.is_set():
                try:
                    await asyncio.to_thread(self.process_once)
                except Exception:  # a bug or the database is down: keep the worker alive
                    log.exception("outbox pass failed")
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.poll_s)
                except TimeoutError:
                    pass
        finally:
            self.close()

    @property
    def owns_queue(self) -> bool:
        """Whether this worker held the queue at its last pass (always, on SQLite)."""
        return self.engine.dialect.name != "postgresql" or self._lock_conn is not None

    def close(self) -> None:
        """Release the worker lock (PostgreSQL)."""
        if self._lock_conn is not None:
            # A session lock outlives a rollback: unlock before the connection goes back to the pool.
            try:
                self._lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _WORKER_LOCK})
                self._lock_conn.execute(text("SELECT set_config('idle_session_timeout', '0', false)"))
                self._lock_conn.commit()
            finally:
                self._lock_conn.close()
                self._lock_conn = None

    def process_once(self) -> int:
        """Take ready items to the chain in order until the queue is empty, blocked, or an
        item must wait for its retry; return how many reached confirmed or failed."""
        if not self._own_worker_lock():
            return 0
        finished = 0
        try:
            while True:
                self._keep_lock()  # still ours before each item (asked at most every second)
                with self.engine.begin() as conn:
                    head_item = head(conn)
                if head_item is None or head_item.state == "failed" or head_item.next_try_ms > self.now_ms():
                    if head_item is not None and head_item.state == "failed":
                        log.debug(
                            "outbox blocked by item %s (%s): %s", head_item.id, head_item.key, head_item.last_error
                        )
                    return finished
                if not self._process(head_item):
                    return finished
                finished += 1
        except _LockLost:
            log.warning(
                "outbox worker lost its lock (silent over %.0f s): another replica may own the queue", self.lock_idle_s
            )
            return finished

    def _own_worker_lock(self) -> bool:
        if self.engine.dialect.name != "postgresql":
            return True  # SQLite: one process owns the file
        if self._lock_conn is not None:
            try:
                self._keep_lock()
                return True
            except _LockLost:
                pass  # ended by the server: try to take it again, like any other replica
        conn = self.engine.connect()
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _WORKER_LOCK}).scalar()
        conn.commit()
        if not got:
            conn.close()
            return False
        try:  # milliseconds; PostgreSQL before 14 has no such setting (a hung worker then keeps the lock)
            conn.execute(
                text("SELECT set_config('idle_session_timeout', :ms, false)"), {"ms": str(int(self.lock_idle_s * 1000))}
            )
            conn.commit()
        except Exception as exc:
            conn.rollback()
            log.warning("outbox: cannot bound the lock session's idle time (%s)", exc)
        self._lock_conn, self._pinged = conn, time.monotonic()
        return True

    def _keep_lock(self) -> None:
        """Speak on the lock session (at most every LOCK_PING_S, or a quarter of lock_idle_s) so PostgreSQL keeps
        it; _LockLost if it has ended."""
        conn = self._lock_conn
        # A worker silent longer than that (hung, then woken) always asks, and learns if it lost the lock.
        if conn is None or time.monotonic() - self._pinged < min(LOCK_PING_S, self.lock_idle_s / 4):
            return
        try:
            conn.execute(text("SELECT 1"))
            conn.commit()
        except Exception as exc:
            self._lock_conn = None
            conn.invalidate()  # ended by the server: never back into the pool
            raise _LockLost() from exc
        self._pinged = time.monotonic()

    def _process(self, item: OutboxItem) -> bool:
        """Move `item` on; True if it reached a final state (or was reset), False to retry later."""
        try:
            if item.state == "pending":
                item = self._sign(item)
            receipt = self._broadcast_and_wait(item)
        except _LockLost:
            raise
        except ContractReverted as exc:
            self._fail(item, exc)
            return True
        except _NonceTaken:
            log.warning("outbox item %s: nonce %s was used by another tx; re-signing", item.key, item.nonce)
            self._update(item.id, state="pending", nonce=None, tx_hash=None, raw_tx=None, last_error="nonce taken")
            return True
        except Exception as exc:  # RPC down, timeout, node hiccup: same item again later
            self._retry(item, exc)
            return False
        if int(receipt["status"]) == 1:
            self._confirm(item, receipt)
        else:
            self._fail(item, self._mined_revert_reason(item, receipt))
        return True

    def _sign(self, item: OutboxItem) -> OutboxItem:
        call, value = ACTIONS[item.action](self.chain, item.payload)
        nonce = self._next_nonce()
        raw, tx_hash = self.chain.build_signed(call, item.action, nonce=nonce, value=value)
        # Durable before broadcast: a crash from here on re-sends these bytes, never new ones.
        with self.engine.begin() as conn:
            updated = conn.execute(
                update(_ob)
                .where((_ob.c.id == item.id) & (_ob.c.state == "pending"))
                .values(state="sent", nonce=nonce, tx_hash=tx_hash, raw_tx=raw, updated_ms=self.now_ms())
            ).rowcount
            if updated != 1:
                raise ChainError(f"outbox item {item.id} changed while it was being signed")
        log.info("outbox %s: signed %s nonce %s", item.key, tx_hash, nonce)
        return _replace(item, state="sent", nonce=nonce, tx_hash=tx_hash, raw_tx=raw)

    def _next_nonce(self) -> int:
        with self.engine.begin() as conn:
            used = conn.execute(select(func.max(_ob.c.nonce))).scalar()
        chain_next = self.chain.pending_nonce()
        return chain_next if used is None else max(chain_next, int(used) + 1)

    def _broadcast_and_wait(self, item: OutboxItem) -> Any:
        assert item.raw_tx is not None and item.tx_hash is not None
        receipt = self._receipt(item.tx_hash)
        if receipt is not None:
            return receipt
        self._broadcast(item)
        deadline = time.monotonic() + self.receipt_timeout
        while (receipt := self._receipt(item.tx_hash)) is None:
            if time.monotonic() > deadline:
                raise TimeExhausted(f"transaction {item.tx_hash} not mined after {self.receipt_timeout} s")
            self._keep_lock()  # a long wait must not read as a hung worker
            time.sleep(0.05)
        return receipt

    def _broadcast(self, item: OutboxItem) -> None:
        assert item.raw_tx is not None and item.tx_hash is not None
        try:
            self.chain.w3.eth.send_raw_transaction(item.raw_tx)
        except (Web3RPCError, ValueError) as exc:  # the node refused it (not: could not reach the node)
            message = str(exc).lower()
            if "already known" in message or "already imported" in message or "known transaction" in message:
                return  # in the pool: wait for it
            if "nonce too low" in message:
                if self._receipt(item.tx_hash) is not None or self._in_pool(item.tx_hash):
                    return
                raise _NonceTaken() from exc
            raise

    def _receipt(self, tx_hash: str) -> Any:
        try:
            return self.chain.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None

    def _in_pool(self, tx_hash: str) -> bool:
        try:
            self.chain.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
            return True
        except TransactionNotFound:
            return False

    def _mined_revert_reason(self, item: OutboxItem, receipt: Any) -> ContractReverted:
        """Replay a mined-but-reverted tx as a call on the state before its block to name the error."""
        action = f"{item.action} ({item.key})"
        try:
            tx = self.chain.w3.eth.get_transaction(item.tx_hash)  # type: ignore[arg-type]
            call = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "value": tx["value"]}
            self.chain.w3.eth.call(call, int(receipt["blockNumber"]) - 1)  # type: ignore[arg-type]
        except ContractLogicError as exc:
            return self.chain.decode_revert(exc, action)
        except Exception as exc:  # the replay is only for the message
            log.debug("could not replay %s: %s", item.tx_hash, exc)
        return ContractReverted("", (), f"{action} reverted on chain (tx {item.tx_hash})")

    # -- outcomes ------------------------------------------------------------------------------

    def _confirm(self, item: OutboxItem, receipt: Any) -> None:
        now = self.now_ms()
        with self.engine.begin() as conn:
            conn.execute(
                update(_ob).where(_ob.c.id == item.id).values(state="confirmed", last_error="", updated_ms=now)
            )
            if self.listener is not None:
                self.listener.on_confirmed(conn, _replace(item, state="confirmed"), now)
        log.info("outbox %s: confirmed %s in block %s", item.key, item.tx_hash, receipt["blockNumber"])

    def _fail(self, item: OutboxItem, error: ContractReverted) -> None:
        now = self.now_ms()
        with self.engine.begin() as conn:
            failed = _replace(item, state="failed", last_error=str(error))
            conn.execute(
                update(_ob)
                .where(_ob.c.id == item.id)
                .values(state="failed", blocking=True, last_error=str(error), updated_ms=now)
            )
            resolved = self.listener.on_failed(conn, failed, error, now) if self.listener is not None else True
            if resolved:
                conn.execute(update(_ob).where(_ob.c.id == item.id).values(blocking=False))
        log.error(
            "outbox %s failed%s: %s",
            item.key,
            "" if resolved else " (queue halted until resolved)",
            error,
        )

    def _retry(self, item: OutboxItem, exc: Exception) -> None:
        attempts = item.attempts + 1
        base, cap = self.backoff_ms
        delay = int(backoff(attempts, base, cap=cap))
        reason = "receipt timeout" if isinstance(exc, TimeExhausted) else f"{type(exc).__name__}: {exc}"
        self._update(item.id, attempts=attempts, last_error=reason[:2000], next_try_ms=self.now_ms() + delay)
        log.warning("outbox %s: attempt %s failed (%s); retry in %s ms", item.key, attempts, reason[:300], delay)

    def _update(self, item_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(_ob).where(_ob.c.id == item_id).values(updated_ms=self.now_ms(), **values))


def _replace(item: OutboxItem, **changes: Any) -> OutboxItem:
    return replace(item, **changes)
