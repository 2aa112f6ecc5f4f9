"""Reviews the referee could not decide: tasks.undecided_ms, when the referee could not finish a
contested task's run within its review budget (repositories.claims). From then on the task's
claimants may not lease it, and more distinct nodes settle its claims.

NULL for every task before this revision: none was undecided (such reviews confirmed the claims).

Revision ID: 0007
Revises: 0006
Created: 2026-12-05 08:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("undecided_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("undecided_ms")
