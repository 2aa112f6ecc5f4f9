"""SQLite's one writer, taken in turn inside the process instead of by SQLite's busy handler.

Every SQLite transaction starts with BEGIN IMMEDIATE (engine._sqlite_begin), which takes the
database's write lock. When another connection holds it, SQLite's busy handler sleeps and tries
again: 1, 2, 5, 10, 15 ms … until busy_timeout. The coordinator runs the hot path's transactions
on the event loop's thread (Runtime.db: inline on SQLite) and the periodic and bulk ones on its DB
thread (reaping, reassigning and expiring checks, the referee's and training's loops: several a
second), so the loop met a DB-thread transaction every few hundred of its own and then slept, with
every call it serves, for 1 ms at least, often 3-8 (profiled under `python -m benchmarks.dispatch`:
the busy handler's usleep on the loop's stack).

`WriterTurns` makes the connections of one engine take turns on a threading.Lock before BEGIN
IMMEDIATE and give it back when the transaction ends: a waiter wakes the moment the holder
commits. SQLite's own lock still decides: connections of other processes (replicas on one file)
meet the busy handler as before, and a turn not had within TURN_WAIT_S (a transaction opened
inside another on one thread, or one whose end was never seen) goes on to BEGIN IMMEDIATE as it
did before this existed.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine, event

TURN_WAIT_S = 1.0


def _raw(connection: Any) -> Any:
    """The driver's connection behind a pool's proxy (or the driver's connection itself)."""
    return getattr(connection, "dbapi_connection", connection)


class WriterTurns:
    """One engine's connections take their write transactions in turn (see the module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: Any = None  # the driver connection whose transaction holds the turn
        self._thread = 0  # the thread that took it

    def take(self, dbapi_connection: Any) -> None:
        """Wait for the turn (at most TURN_WAIT_S; not at all when this thread holds it already)."""
        if self._holder is not None and self._thread == threading.get_ident():
            return  # a transaction inside another on this thread: SQLite's busy handler, as before
        if self._lock.acquire(timeout=TURN_WAIT_S):
            self._holder, self._thread = dbapi_connection, threading.get_ident()

    def give_back(self, dbapi_connection: Any) -> None:
        """The transaction of this connection ended: its turn (if it had one) is over."""
        if self._holder is not None and self._holder is _raw(dbapi_connection):
            self._holder, self._thread = None, 0
            self._lock.release()

    def install(self, engine: Engine) -> None:
        """Give the turn back whenever one of the engine's transactions ends, however it ends:
        commit, rollback (also the pool's reset on return), close, invalidation."""
        dialect = engine.dialect
        setattr(dialect, "_tensorgrid_turns", self)  # noqa: B010 - for the tests to reach
        for name in ("do_commit", "do_rollback", "do_close"):
            setattr(dialect, name, self._ending(getattr(dialect, name)))
        pool = engine.pool
        for name in ("checkin", "reset", "invalidate", "soft_invalidate", "close", "detach"):
            event.listen(pool, name, self._on_pool_event)

    def _ending(self, inner: Any) -> Any:
        def ended(dbapi_connection: Any, *args: Any) -> Any:
            try:
                return inner(dbapi_connection, *args)
            finally:
                self.give_back(dbapi_connection)

        return ended

    def _on_pool_event(self, dbapi_connection: Any, *_args: Any) -> None:
        self.give_back(dbapi_connection)
