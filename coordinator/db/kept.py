"""Transactions of the hot path on a connection kept open per thread (SQLite).

`engine.begin()` checks a connection out of the pool, builds a Connection and its event
dispatch, and checks it back in: measured on SQLite, three times what BEGIN IMMEDIATE and
COMMIT themselves cost, and paid by every group commit of results and leases (several a
millisecond under `python -m benchmarks.dispatch`). `begin(engine)` runs the transaction on a
Connection this thread keeps open instead; BEGIN, COMMIT, the engine's events and the locks
taken are the same. A connection in use on this thread (a transaction opened inside another)
gets a pooled one, as before. PostgreSQL keeps the pool: its connections are checked
(pool_pre_ping) and shared by the DB threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine


class _Kept:
    """One engine's kept connections, one per thread that used begin()."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.all: list[Connection] = []

    def connection(self, engine: Engine) -> Connection:
        conn: Connection | None = getattr(self.local, "conn", None)
        if conn is not None and not conn.closed and not conn.invalidated:
            return conn
        if conn is not None:
            self._drop(conn)
        conn = engine.connect()
        self.local.conn = conn
        with self.lock:
            self.all.append(conn)
        return conn

    def _drop(self, conn: Connection) -> None:
        with self.lock:
            if conn in self.all:
                self.all.remove(conn)
        conn.close()

    def close(self) -> None:
        with self.lock:
            conns, self.all = self.all, []
        for conn in conns:
            conn.close()


# The holder hangs on its engine (not in a registry here, which its connections, referring to the
# engine, would keep alive for ever): it goes when the engine goes.
_ATTR = "_tensorgrid_kept"
_lock = threading.Lock()


def _holder(engine: Engine) -> _Kept:
    kept: _Kept | None = getattr(engine, _ATTR, None)
    if kept is None:
        with _lock:
            kept = getattr(engine, _ATTR, None)
            if kept is None:
                kept = _Kept()
                setattr(engine, _ATTR, kept)
    return kept


@contextmanager
def begin(engine: Engine) -> Iterator[Connection]:
    """`engine.begin()`: one transaction, committed on leaving, rolled back on an exception."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    conn = _holder(engine).connection(engine)
    if conn.in_transaction():  # inside another begin() of this thread: a connection of its own
        with engine.begin() as other:
            yield other
        return
    with conn.begin():
        yield conn


def close(engine: Engine) -> None:
    """Close the engine's kept connections (before engine.dispose(), once no transaction runs)."""
    kept: _Kept | None = getattr(engine, _ATTR, None)
    if kept is not None:
        kept.close()
