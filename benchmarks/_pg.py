"""PostgreSQL for benchmarks: a fresh database per run, its activity counters, its backends' CPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import psycopg

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"  # the tests' server (TENSORGRID_TEST_PG)


@contextmanager
def fresh_database(admin_url: str, name: str) -> Iterator[str]:
    """CREATE DATABASE name on admin_url's server; yields its URL; drops it afterwards."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class DbCounters:
    """pg_stat_database's cumulative counters of one database (flushed by backends about once a second)."""

    commits: int
    updated: int  # rows updated
    inserted: int
    fetched: int  # rows fetched by index scans and the like

    def per_s(self, later: DbCounters, seconds: float) -> dict[str, float]:
        return {
            "commits_per_s": round((later.commits - self.commits) / seconds, 1),
            "rows_updated_per_s": round((later.updated - self.updated) / seconds, 1),
            "rows_inserted_per_s": round((later.inserted - self.inserted) / seconds, 1),
            "rows_fetched_per_s": round((later.fetched - self.fetched) / seconds, 1),
        }


def db_counters(admin_url: str, name: str) -> DbCounters:
    with psycopg.connect(admin_url, autocommit=True) as conn:  # a new connection: no cached stats snapshot
        row = conn.execute(
            "SELECT xact_commit, tup_updated, tup_inserted, tup_fetched FROM pg_stat_database WHERE datname = %s",
            (name,),
        ).fetchone()
    assert row is not None, f"no database {name}"
    return DbCounters(*(int(x) for x in row))


def backend_cpu_s(name: str) -> float:
    """CPU seconds so far of the PostgreSQL backends serving database `name` (their process title
    names it: "postgres: USER DBNAME HOST(PORT) STATE"). Backends that ended are not counted."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        title = cmd[0] if cmd else ""
        if title.startswith("postgres:") and f" {name} " in title:
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
    return total
