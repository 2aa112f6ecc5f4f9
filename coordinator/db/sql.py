"""Small SQL helpers shared by the repositories (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.dialects import postgresql, sqlite

_LEDGER_LOCK = 0x74676C64  # "tgld"


def lock_ledger(conn: Connection) -> None:
    """Serialize epoch making across replicas for this transaction.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: nothing to do, every write
    transaction already holds the database lock (BEGIN IMMEDIATE in db.engine).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LEDGER_LOCK})


def insert_ignore(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT … ON CONFLICT DO NOTHING for `rows`."""
    if not rows:
        return
    ins = postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)
    conn.execute(ins.on_conflict_do_nothing(), list(rows))


@contextmanager
def transaction(conn_or_engine: Connection | Engine) -> Iterator[Connection]:
    """The caller's transaction if given a Connection, else a new one on the Engine."""
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.begin() as conn:
            yield conn
    else:
        yield conn_or_engine


def chunks(values: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]
