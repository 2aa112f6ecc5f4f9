"""The leases each node holds: an index on tasks (node, state), which leasing counts at every
grant against the node's cap (--max-node-leases). Building it scans the tasks table once and
holds off writes to it meanwhile (the upgrade runs at a replica's start).

Revision ID: 0003
Revises: 0002
Created: 2026-12-03 13:12:45.364871
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index("ix_tasks_node_state", ["node", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_node_state")
