"""Engines from a database URL: SQLite (file, WAL) by default, PostgreSQL for production."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from coordinator.db import migrate, schema
from tensorgrid.errors import TensorGridError


def normalize_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use psycopg 3 for them."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, prepare: bool = True) -> Engine:
    """Create the engine and bring the schema to this code's head (coordinator.db.migrate);
    refuse a database from a newer schema version. prepare=False: only the engine."""
    url = normalize_url(url)
    u = make_url(url)
    kwargs: dict[str, Any] = {}
    if u.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        # The most recently used connection first: its page cache is still valid (SQLite empties a
        # connection's cache whenever another connection wrote), so the hot path reads no pages back.
        kwargs["pool_use_lifo"] = True
    else:
        kwargs.update(pool_size=8, max_overflow=8, pool_pre_ping=True)
    engine = create_engine(url, **kwargs)
    if u.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    if prepare:
        upgrade(engine)
    return engine


def upgrade(engine: Engine) -> tuple[migrate.SchemaState, migrate.SchemaState]:
    """Bring the schema to this code's head (coordinator.db.migrate); (before, after)."""
    states = migrate.bring_to_head(engine)
    _check_version(engine)
    return states


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers proceed during writes; NORMAL sync is durable across a process
    # crash (only an OS crash can lose the last commits), which is the failure we face.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is deferred).
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Any) -> None:
    # IMMEDIATE takes the write lock up front, so a SELECT … then UPDATE (leasing) cannot
    # interleave with another writer: SQLite's stand-in for SELECT … FOR UPDATE.
    # Straight on the driver: exec_driver_sql's statement machinery cost more than the BEGIN
    # itself, on every transaction (the statement returns nothing, so nothing is lost).
    conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE").close()


def _check_version(engine: Engine) -> None:
    # The releases before migrations refuse a database whose meta schema_version is above theirs,
    # so a revision that those releases cannot run on raises SCHEMA_VERSION along with it.
    with engine.begin() as conn:
        row = conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")).first()
        if row is None:
            try:
                conn.execute(insert(schema.meta).values(key="schema_version", value=str(schema.SCHEMA_VERSION)))
            except IntegrityError:  # another replica created it first
                return
        elif int(row[0]) > schema.SCHEMA_VERSION:
            raise TensorGridError(
                f"the database has schema version {row[0]}, newer than this coordinator's "
                f"{schema.SCHEMA_VERSION}: upgrade tensorgrid"
            )


def meta_value(engine: Engine, key: str, default: str) -> str:
    """Read a setting shared by all replicas, storing `default` if none is set yet."""
    with engine.begin() as conn:
        row = conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == key)).first()
        if row is not None:
            return str(row.value)
        try:
            with conn.begin_nested():
                conn.execute(insert(schema.meta).values(key=key, value=default))
        except IntegrityError:
            return str(conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == key)).one().value)
    return default


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
