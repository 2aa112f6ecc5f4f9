"""Node sessions remember when they opened (sessions.started_ms): at a node's heartbeat the
coordinator reissues the leases granted to it before its current session opened that the
heartbeat does not list (a restarted daemon's), not a lease TTL later.

Sessions opened before this revision keep NULL: nothing is released for them (their leases
expire as before).

Revision ID: 0006
Revises: 0005
Created: 2026-12-05 05:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("started_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("started_ms")
