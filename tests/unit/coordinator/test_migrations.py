"""Schema migrations, on SQLite and PostgreSQL: a database made by the release before migrations
(a committed dump of one, with rows) is stamped and upgraded keeping every row, a new database
is made at head, the revisions build exactly the models' schema (so a model change without a
revision fails here), replicas upgrading at once do it once, and a newer database is refused."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, insert, select, update

from coordinator.db import migrate, migrations
from coordinator.db import schema as s
from coordinator.db.engine import make_engine, upgrade
from coordinator.db.migrate import SchemaState
from tensorgrid.errors import TensorGridError

LEGACY = Path(__file__).parent / "legacy_db"  # made by legacy_db/make.py with the 0.1.0 code
NODE = "0x" + "ab" * 20
JOB = "cd" * 32
BIG_WEI = 2**255 + 7


def load_legacy(url: str) -> None:
    """The previous release's database, rows and all, at `url` (an empty SQLite file or PostgreSQL database)."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.executescript((LEGACY / "v0.1.0.sqlite.sql").read_text())
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute((LEGACY / "v0.1.0.postgresql.sql").read_text().encode())


def drift(engine: Engine) -> list[object]:
    """What autogenerate would change to make the database match the models: nothing, when they agree."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(context, s.metadata))


def revision_of(engine: Engine) -> SchemaState:
    with engine.connect() as conn:
        return migrate.state(conn)


def test_a_database_of_the_previous_release_is_upgraded_with_every_row(empty_db_url: str) -> None:
    load_legacy(empty_db_url)
    engine = make_engine(empty_db_url, prepare=False)
    assert revision_of(engine) == SchemaState(None, ours=True)
    before, after = upgrade(engine)
    assert (before.revision, after) == (None, SchemaState(migrations.HEAD, ours=True))
    with engine.begin() as conn:
        assert conn.execute(select(s.meta.c.value).where(s.meta.c.key == "epoch_interval_ms")).scalar() == "30000"
        assert conn.execute(select(s.nodes.c.completed).where(s.nodes.c.address == NODE)).scalar() == 7
        assert conn.execute(select(s.jobs.c.spec_json, s.jobs.c.event_seq)).one() == (b"{}", 4)
        price = conn.execute(select(s.job_prices.c.credited_wei, s.job_prices.c.budget_wei)).one()
        assert price == (BIG_WEI, 2**200)  # exact past 64 bits, on both databases
        assert conn.execute(select(s.credits.c.amount_wei)).scalar() == BIG_WEI
        # the id sequence came along: a new credit follows the old one
        new = insert(s.credits).values(
            node=NODE, job_id=JOB, task_id="02" * 32, attempt=1, amount_wei=1, created_ms=1, void=False
        )
        assert conn.execute(new.returning(s.credits.c.id)).scalar() == 2
        assert conn.execute(select(func.count()).select_from(s.credits)).scalar() == 2
    assert drift(engine) == []
    assert upgrade(engine) == (after, after)  # a second start has nothing to do
    engine.dispose()


def test_a_new_database_is_made_at_head_with_the_models_schema(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    assert revision_of(engine) == SchemaState(migrations.HEAD, ours=True)
    assert drift(engine) == []
    engine.dispose()


def test_the_revisions_build_exactly_the_models_schema(empty_db_url: str) -> None:
    """Every revision run from nothing gives what create_all gives: a column added to a model
    without a revision (`python -m coordinator.db.migrate revision "..."`) fails here."""
    engine = make_engine(empty_db_url, prepare=False)
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), "head")
    assert revision_of(engine).revision == migrations.HEAD
    assert drift(engine) == []
    engine.dispose()


def test_head_names_the_scripts_one_head() -> None:
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert scripts.get_heads() == [migrations.HEAD]
    assert scripts.get_revision(migrations.BASELINE).down_revision is None


def test_replicas_starting_together_on_an_old_database_upgrade_it_once(pg_url: str) -> None:
    load_legacy(pg_url)
    engines = [make_engine(pg_url, prepare=False) for _ in range(3)]
    results: list[object] = []
    threads = [threading.Thread(target=lambda e=e: results.append(_try_upgrade(e))) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    finals = [r for r in results if isinstance(r, tuple)]
    assert len(finals) == 3, results
    assert sum(1 for before, _ in finals if before.revision is None) == 1  # one did it, the others found it done
    with engines[0].connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.nodes)).scalar() == 1
    for engine in engines:
        engine.dispose()


def _try_upgrade(engine: Engine) -> object:
    try:
        return upgrade(engine)
    except Exception as e:  # reported by the assertion, with the others' results
        return e


def test_a_database_a_newer_release_upgraded_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    make_engine(url).dispose()
    engine = make_engine(url, prepare=False)
    with engine.begin() as conn:
        conn.execute(update(migrate.VERSION_TABLE).values(version_num="9999"))
    with pytest.raises(TensorGridError, match="revision '9999', which this coordinator does not know"):
        make_engine(url)
    assert revision_of(engine).revision == "9999"  # refused, not touched
    engine.dispose()


def test_an_incomplete_old_database_is_refused_unchanged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    load_legacy(url)
    with sqlite3.connect(tmp_path / "c.db") as conn:
        conn.execute("DROP TABLE upload_days")
    with pytest.raises(TensorGridError, match="lacks the tables upload_days after its upgrade"):
        make_engine(url)
    engine = make_engine(url, prepare=False)
    assert revision_of(engine) == SchemaState(None, ours=True)  # not stamped: the transaction rolled back
    engine.dispose()


def test_a_start_on_a_new_or_current_database_never_imports_alembic(tmp_path: Path) -> None:
    """Every coordinator start pays for the check: one row read, no Alembic (0.9 s of imports on 2 busy cores)."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    probe = (
        "import sys; from coordinator.db.engine import make_engine;"
        f"make_engine({url!r}).dispose(); make_engine({url!r}).dispose();"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
