"""Decoys: tasks of a check's m rows carved out of a job's shards, paid by rows (a new table;
nothing existing changes, and jobs planned before it have none).

Revision ID: 0004
Revises: 0003
Created: 2026-12-03 18:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decoys",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("unit_rows", sa.Integer(), nullable=False),
        sa.Column("drawn_attempt", sa.Integer(), nullable=False),
        sa.Column("won", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("task_id"),
    )
    with op.batch_alter_table("decoys", schema=None) as batch_op:
        batch_op.create_index("ix_decoys_job", ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("decoys", schema=None) as batch_op:
        batch_op.drop_index("ix_decoys_job")
    op.drop_table("decoys")
