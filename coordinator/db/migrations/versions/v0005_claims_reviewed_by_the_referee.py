"""Claims reviewed by the referee: a failure claim's verdict, once the referee ran the task it is
about (NULL for every claim before this revision: they keep the rule they were made under).

Revision ID: 0005
Revises: 0004
Created: 2026-12-04 12:27:14
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("failure_claims", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verdict", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("failure_claims", schema=None) as batch_op:
        batch_op.drop_column("verdict")
