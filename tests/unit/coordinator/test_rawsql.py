"""Raw hot-path statements read and write what SQLAlchemy's own execute would, on both backends."""

from __future__ import annotations

from sqlalchemy import bindparam, insert, select

from coordinator.db import schema as s
from coordinator.db.engine import make_engine
from coordinator.db.rawsql import Raw, RawInsert

BIG = 2**200 + 12345  # past a float's precision: any lossy conversion shows


def test_raw_select_converts_results_like_sqlalchemy(db_url: str) -> None:
    engine = make_engine(db_url)
    price = Raw(select(s.job_prices).where(s.job_prices.c.job_id == bindparam("b_job")).with_for_update())
    row = dict(job_id="a" * 64, reward_per_task_wei=7, budget_wei=BIG, credited_wei=0, void_reason="")
    with engine.begin() as conn:
        conn.execute(insert(s.job_prices).values(**row))
    for _ in range(2):  # the first call learns the result processors from the cursor, the second reuses them
        with engine.begin() as conn:
            raw = price.first(conn, {"b_job": "a" * 64})
            core = conn.execute(select(s.job_prices).where(s.job_prices.c.job_id == "a" * 64)).one()
            missing = price.first(conn, {"b_job": "b" * 64})
        assert tuple(raw) == tuple(core)
        assert raw.budget_wei == BIG and type(raw.budget_wei) is int and raw.reward_per_task_wei == 7
        assert missing is None
    engine.dispose()


def test_raw_insert_writes_what_sqlalchemy_would(db_url: str) -> None:
    # receipts: a binary column (its bind converts the value) among plain ones, rows keyed by column
    engine = make_engine(db_url)
    raw = RawInsert(s.receipts, [c.name for c in s.receipts.c])
    rows = [
        dict(task_id=f"{i:064x}", attempt=i + 1, node="0x" + "ab" * 20, input_hash="e" * 64, output_hash="f" * 64,
             commitment="0" * 64, signature=bytes([i, 0, 255]) * 21 + b"\x1b\x00", received_ms=2**40 + i)
        for i in range(4)
    ]  # fmt: skip
    for _ in range(2):  # the first call builds the row picker, the second reuses it
        with engine.begin() as conn:
            raw.many(conn, rows[:2])
            conn.execute(insert(s.receipts), rows[2:])
        with engine.begin() as conn:
            got = [r._asdict() for r in conn.execute(select(s.receipts).order_by(s.receipts.c.task_id))]
            conn.execute(s.receipts.delete())
        assert got == rows
    engine.dispose()
