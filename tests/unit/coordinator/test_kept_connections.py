"""The hot path's transactions on a kept connection: the same commits and rollbacks as engine.begin()."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select

from coordinator.db import kept
from coordinator.db import schema as s
from coordinator.db.engine import make_engine


def _meta(conn: Connection, key: str) -> Any:
    return conn.execute(select(s.meta.c.value).where(s.meta.c.key == key)).scalar()


def test_a_thread_keeps_one_connection_and_its_transactions_commit_or_roll_back(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with kept.begin(engine) as conn:
        first = conn.connection.dbapi_connection
        conn.execute(insert(s.meta).values(key="a", value="1"))
    with pytest.raises(RuntimeError), kept.begin(engine) as conn:
        conn.execute(insert(s.meta).values(key="b", value="2"))
        raise RuntimeError("the transaction fails")
    with kept.begin(engine) as conn:
        assert conn.connection.dbapi_connection is first  # no pool checkout per transaction
        assert (_meta(conn, "a"), _meta(conn, "b")) == ("1", None)
    others: list[object] = []

    def elsewhere() -> None:
        with kept.begin(engine) as conn:
            others.append(conn.connection.dbapi_connection)
            conn.execute(insert(s.meta).values(key="c", value="3"))

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert others and others[0] is not first  # each thread its own
    with engine.connect() as conn:  # what the kept connections committed, seen by any other
        assert (_meta(conn, "a"), _meta(conn, "b"), _meta(conn, "c")) == ("1", None, "3")
    kept.close(engine)
    with kept.begin(engine) as conn:  # closed: the next transaction opens a new one
        assert conn.connection.dbapi_connection is not first
        assert _meta(conn, "a") == "1"
    kept.close(engine)
    engine.dispose()
