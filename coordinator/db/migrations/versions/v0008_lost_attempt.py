"""Tasks remember the attempt of a lease that expired or that a restart left behind
(tasks.lost_attempt): its node's result, handed in late, is taken while nobody else's is in
(repositories.tasks.lost_lease), not refused as of an ended lease.

Tasks reissued before this revision keep NULL: a late result for them is refused as before.

Revision ID: 0008
Revises: 0007
Created: 2026-12-05 08:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lost_attempt", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("lost_attempt")
