"""Claims the referee's failed run confirmed are paid for the work the failure took
(repositories.ledger.claim_pay): failure_claims.work_done and work_total (how far the referee's
run got before it failed, of the task's rows or inner steps) and won (the claim's draw of one
reward with probability work_done / work_total).

NULL for every claim before this revision: none was drawn, none is paid.

Revision ID: 0009
Revises: 0008
Created: 2026-12-05 10:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("failure_claims", schema=None) as batch_op:
        batch_op.add_column(sa.Column("work_done", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("work_total", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("won", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("failure_claims", schema=None) as batch_op:
        batch_op.drop_column("won")
        batch_op.drop_column("work_total")
        batch_op.drop_column("work_done")
