"""The schema's version: every coordinator brings its database to this code's head at start-up.

    no alembic_version, no meta table   a new database: the models' tables, stamped HEAD
    no alembic_version, a meta table    the previous release's (its create_all at every start made
                                        every table of BASELINE): stamped BASELINE and upgraded
    alembic_version = HEAD              nothing to do: one row read, Alembic not even imported
    a revision this code knows          upgraded by Alembic to HEAD, in one transaction
    a revision it does not know         refused: a newer TensorGrid migrated it (no downgrade)

Why at start-up and not only by `tensorgrid-coordinator db upgrade`: the releases before
migrations also made their schema at start, so restarting on a new version keeps working;
replicas sharing a PostgreSQL database take an advisory lock, so one upgrades and the others
find it done (SQLite's BEGIN IMMEDIATE serialises the same way). Operators who want the
upgrade as its own step (after a backup) run `db upgrade` first; the start then has nothing
left to do.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    insert,
    inspect,
    select,
)
from sqlalchemy import text as sql_text

from coordinator.db import migrations, schema
from tensorgrid.errors import TensorGridError

log = logging.getLogger("tensorgrid.coordinator.db")

# Alembic's own version table, as Alembic makes it, on a MetaData of its own (not a model).
VERSION_TABLE = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)
_PG_LOCK = 0x7465_6E73_6772_6964  # "tensgrid": the advisory lock replicas take to migrate one at a time


@dataclass(frozen=True)
class SchemaState:
    """What a database holds: its revision (None without a version table) and whether it has tables of ours."""

    revision: str | None
    ours: bool

    def describe(self) -> str:
        if self.revision == migrations.HEAD:
            return f"revision {self.revision} (head: up to date)"
        if self.revision is not None:
            return f"revision {self.revision} (head is {migrations.HEAD}: `db upgrade` or a start upgrades it)"
        if self.ours:
            return f"no revision: made by a release before migrations (an upgrade stamps it {migrations.BASELINE})"
        return "empty: the first start (or `db upgrade`) creates the schema"


def state(conn: Connection) -> SchemaState:
    """The database's schema state, read in two cheap catalogue look-ups and one row."""
    found = inspect(conn)
    if not found.has_table(VERSION_TABLE.name):
        return SchemaState(None, found.has_table(schema.meta.name))
    rows = conn.execute(select(VERSION_TABLE.c.version_num)).scalars().all()
    if len(rows) != 1:
        raise TensorGridError(f"alembic_version holds {len(rows)} revisions, not one: this tool does not branch")
    return SchemaState(rows[0], True)


def bring_to_head(engine: Engine) -> tuple[SchemaState, SchemaState]:
    """Create, stamp or upgrade the schema so it is this code's HEAD; (before, after)."""
    with engine.begin() as conn:
        before = state(conn)
        if before.revision == migrations.HEAD:
            return before, before
        if conn.dialect.name == "postgresql":
            conn.execute(sql_text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
            before = state(conn)  # another replica may have done it while we waited
        if before.revision is None:
            if not before.ours:  # a new database: the models are HEAD's schema (a test holds them equal)
                schema.metadata.create_all(conn)
            VERSION_TABLE.create(conn)
            stamp = migrations.BASELINE if before.ours else migrations.HEAD
            conn.execute(insert(VERSION_TABLE).values(version_num=stamp))
        revision = state(conn).revision
        if revision != migrations.HEAD:
            _upgrade(conn, revision or "")
        if before.ours:
            _check_tables(conn)
        after = state(conn)
    if before.revision != after.revision and before.ours:
        log.warning("database schema upgraded: %s -> revision %s", before.describe(), after.revision)
    return before, after


def _check_tables(conn: Connection) -> None:
    """After a stamp or an upgrade every model's table is there, or the database was not what it seemed."""
    missing = sorted(set(schema.metadata.tables) - set(inspect(conn).get_table_names()))
    if missing:
        raise TensorGridError(
            f"the database lacks the tables {', '.join(missing)} after its upgrade: it is not a complete TensorGrid "
            "database (nothing was changed); restore it from a backup or point the coordinator at an empty one"
        )


def _upgrade(conn: Connection, revision: str) -> None:
    """Alembic's upgrade to head on this connection (in its transaction); refuse a revision it does not know."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    config = alembic_config(conn)
    try:
        ScriptDirectory.from_config(config).get_revision(revision)
    except CommandError:
        raise TensorGridError(
            f"the database's schema is at revision {revision!r}, which this coordinator does not know: a newer "
            f"TensorGrid upgraded it (this one's head is {migrations.HEAD}); run that version or restore a backup"
        ) from None
    command.upgrade(config, "head")


def alembic_config(conn: Connection | None = None) -> Any:
    """Alembic's configuration for our scripts (no alembic.ini: nothing to ship or to keep in step)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations.SCRIPTS))
    config.set_main_option("file_template", "v%%(rev)s_%%(slug)s")  # a module name: no leading digit
    config.attributes["connection"] = conn
    return config


def write_revision(message: str) -> None:
    """A developer's tool: write a revision from the difference between the models and the scripts' head."""
    from tempfile import TemporaryDirectory

    from alembic import command
    from sqlalchemy import create_engine

    with TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{scratch}/scratch.db")
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")  # every revision, from nothing
            number = f"{int(migrations.HEAD) + 1:04d}"
            command.revision(alembic_config(conn), message, autogenerate=True, rev_id=number)
        engine.dispose()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "revision":
        sys.exit('usage: python -m coordinator.db.migrate revision "what changed"')
    write_revision(sys.argv[2])
