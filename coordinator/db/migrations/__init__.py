"""The coordinator's schema history, as Alembic revisions (versions/), run by coordinator.db.migrate.

HEAD names the newest revision so a coordinator whose database is already there checks one row
and imports no Alembic; a test holds it equal to the scripts' head. BASELINE is the schema the
releases before migrations created at start-up (create_all, no alembic_version table): such a
database is stamped with it, then upgraded like any other.

A change to a table in coordinator/db/tables needs a revision here (a test compares the models
with the migrated schema):
    .venv/bin/python -m coordinator.db.migrate revision "what changed"
writes versions/vNNNN_what_changed.py from the difference; read and fix it, then set HEAD."""

from __future__ import annotations

from pathlib import Path

HEAD = "0009"
BASELINE = "0001"
SCRIPTS = Path(__file__).resolve().parent
