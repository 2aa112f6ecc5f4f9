"""Raw hot-path statements read and write what SQLAlchemy's own execute would, on both backends."""

from __future__ import annotations

from sqlalchemy import bindparam, insert, select

from coordinator.db import schema as s
from coordinator.db.engine import make_engine
from coordinator.db.rawsql import Raw

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
