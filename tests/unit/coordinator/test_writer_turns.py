"""SQLite's write lock taken in turn inside the process (coordinator/db/writer.py): a transaction
that waits for another thread's starts as soon as that one ends, not when SQLite's busy handler
next wakes up; every way a transaction ends gives the turn back."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select

from coordinator.db import kept, writer
from coordinator.db import schema as s
from coordinator.db.engine import make_engine


def _meta(conn: Connection, key: str) -> Any:
    return conn.execute(select(s.meta.c.value).where(s.meta.c.key == key)).scalar()


def test_a_waiting_transaction_starts_when_the_holder_commits(tmp_path: Path) -> None:
    """Held for 240 ms: SQLite's busy handler, retrying after sleeps of 1, 2, 5, 10, 15, 20, 25,
    25, 25, 50, 50 and 100 ms, gets in at 328 ms, about 90 ms after the commit (without
    db/writer.py this fails: began 0.096-0.100 s after); a turn is handed over at once."""
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    holding, committed = threading.Event(), [0.0]

    def holder() -> None:
        with kept.begin(engine) as conn:
            conn.execute(insert(s.meta).values(key="held", value="1"))
            holding.set()
            time.sleep(0.24)
            committed[0] = time.monotonic()  # leaving the block commits, at once

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(10)
    with kept.begin(engine) as conn:
        started = time.monotonic()
        assert _meta(conn, "held") == "1"
    thread.join()
    assert started - committed[0] < 0.04, f"began {started - committed[0]:.3f} s after the other transaction ended"


@pytest.mark.parametrize("end", ["commit", "rollback", "raise", "close", "invalidate"])
def test_every_end_of_a_transaction_gives_its_turn_back(tmp_path: Path, end: str) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    conn = engine.connect()
    conn.begin()
    conn.execute(insert(s.meta).values(key="k", value="1"))
    if end == "commit":
        conn.commit()
    elif end == "rollback":
        conn.rollback()
    elif end == "raise":
        with pytest.raises(RuntimeError), conn.begin_nested():
            raise RuntimeError("savepoint only")
        conn.close()  # the outer transaction is rolled back as the connection goes back to the pool
    elif end == "close":
        conn.close()
    else:
        conn.invalidate()
        conn.close()
    # Another thread gets the turn at once (a turn kept would make it wait writer.TURN_WAIT_S).
    waited: list[float] = []

    def other() -> None:
        t0 = time.monotonic()
        with engine.begin() as c:
            c.execute(select(1)).all()
        waited.append(time.monotonic() - t0)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(30)
    assert waited and waited[0] < writer.TURN_WAIT_S / 2, waited
    engine.dispose()


def test_a_turn_never_given_back_delays_others_by_at_most_the_wait(tmp_path: Path, monkeypatch: Any) -> None:
    """A transaction whose end the engine never saw (a bug) costs the others TURN_WAIT_S, then
    they go on to BEGIN IMMEDIATE as before (SQLite's lock still decides)."""
    monkeypatch.setattr(writer, "TURN_WAIT_S", 0.2)
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    turns: writer.WriterTurns = engine.dialect._tensorgrid_turns  # type: ignore[attr-defined]
    turns.take(object())  # held by no connection of the engine, never given back
    t0 = time.monotonic()

    def other() -> None:
        with engine.begin() as conn:
            conn.execute(insert(s.meta).values(key="after", value="1"))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(30)
    assert 0.15 < time.monotonic() - t0 < 5
    with engine.begin() as conn:
        assert _meta(conn, "after") == "1"
