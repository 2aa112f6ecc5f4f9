"""Alembic's environment: migrations run on the connection coordinator.db.migrate hands over,
inside its transaction (under its lock), against the coordinator's one MetaData."""

from __future__ import annotations

from alembic import context

from coordinator.db.schema import metadata


def run() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite alters a table by copying it: revisions written as batch operations run on both databases
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
