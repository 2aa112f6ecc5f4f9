"""The schema of the releases before migrations: what their create_all made, frozen here.

A database made by one of them has these tables and no alembic_version: it is stamped with
this revision (coordinator.db.migrate), not run through it.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# coordinator.db.wei.Wei as it was: exact uint256 as NUMERIC(78, 0) on PostgreSQL, decimal text on SQLite
WEI = sa.String(78).with_variant(sa.Numeric(78, 0), "postgresql")


def upgrade() -> None:
    op.create_table(
        "blob_owners",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=42), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", "owner"),
    )
    with op.batch_alter_table("blob_owners", schema=None) as batch_op:
        batch_op.create_index("ix_blob_owners_owner", ["owner"], unique=False)

    op.create_table(
        "canary_plans",
        sa.Column("check_id", sa.String(length=64), nullable=False),
        sa.Column("canary_id", sa.String(length=64), nullable=False),
        sa.Column("input_sha", sa.String(length=64), nullable=False),
        sa.Column("input_size", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("check_id"),
    )
    op.create_table(
        "check_assignments",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=42), nullable=False),
        sa.Column("until_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("task_id"),
    )
    op.create_table(
        "check_exclusions",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=42), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "node"),
    )
    op.create_table(
        "checks",
        sa.Column("check_id", sa.String(length=64), nullable=False),
        sa.Column("root_id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject_task", sa.String(length=64), nullable=False),
        sa.Column("subject_attempt", sa.Integer(), nullable=False),
        sa.Column("subject_node", sa.String(length=42), nullable=False),
        sa.Column("subject_output", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("checker", sa.String(length=42), nullable=True),
        sa.Column("checker_output", sa.String(length=64), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("check_id"),
    )
    with op.batch_alter_table("checks", schema=None) as batch_op:
        batch_op.create_index("ix_checks_job", ["job_id", "state"], unique=False)
        batch_op.create_index("ix_checks_root", ["root_id"], unique=False)

    op.create_table(
        "credits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node", sa.String(length=42), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("amount_wei", WEI, nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("void", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "attempt", name="uq_credits_task_attempt"),
    )
    with op.batch_alter_table("credits", schema=None) as batch_op:
        batch_op.create_index("ix_credits_epoch", ["epoch", "void"], unique=False)
        batch_op.create_index("ix_credits_job", ["job_id", "epoch"], unique=False)

    op.create_table(
        "epoch_earnings",
        sa.Column("epoch", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("node", sa.String(length=42), nullable=False),
        sa.Column("cumulative_wei", WEI, nullable=False),
        sa.PrimaryKeyConstraint("epoch", "node"),
    )
    op.create_table(
        "epochs",
        sa.Column("epoch", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("root", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("total_wei", WEI, nullable=False),
        sa.Column("charged_wei", WEI, nullable=False),
        sa.Column("outbox_key", sa.String(length=200), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("epoch"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.Column("task_index", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=42), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("tasks_done", sa.Integer(), nullable=False),
        sa.Column("tasks_total", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_job_seq", ["job_id", "seq"], unique=True)

    op.create_table(
        "failure_claims",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=42), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("claimed_ms", sa.BigInteger(), nullable=False),
        sa.Column("confirmed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "node"),
    )
    op.create_table(
        "job_policies",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("required_stake_wei", WEI, nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
    )
    op.create_table(
        "job_prices",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("reward_per_task_wei", WEI, nullable=False),
        sa.Column("budget_wei", WEI, nullable=False),
        sa.Column("credited_wei", WEI, nullable=False),
        sa.Column("void_reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
    )
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("submitter", sa.String(length=42), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("spec_json", sa.LargeBinary(), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("tasks_total", sa.Integer(), nullable=False),
        sa.Column("tasks_done", sa.Integer(), nullable=False),
        sa.Column("task_failures", sa.Integer(), nullable=False),
        sa.Column("result_sha", sa.String(length=64), nullable=True),
        sa.Column("result_size", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("event_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_submitter"), ["submitter"], unique=False)

    op.create_table(
        "meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "node_earnings",
        sa.Column("node", sa.String(length=42), nullable=False),
        sa.Column("earned_wei", WEI, nullable=False),
        sa.Column("charged_wei", WEI, nullable=False),
        sa.PrimaryKeyConstraint("node"),
    )
    op.create_table(
        "node_reputation",
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("consecutive_valid", sa.Integer(), nullable=False),
        sa.Column("verified", sa.Integer(), nullable=False),
        sa.Column("caught", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("address"),
    )
    op.create_table(
        "nodes",
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("capabilities", sa.Text(), nullable=False),
        sa.Column("device_kind", sa.String(length=16), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("registered_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger(), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("rejections", sa.Integer(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("backoff_until_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("address"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("blocking", sa.Boolean(), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=True),
        sa.Column("tx_hash", sa.String(length=66), nullable=True),
        sa.Column("raw_tx", sa.LargeBinary(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("next_try_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_state", ["state", "id"], unique=False)

    op.create_table(
        "receipts",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=42), nullable=False),
        sa.Column("input_hash", sa.String(length=64), nullable=False),
        sa.Column("output_hash", sa.String(length=64), nullable=False),
        sa.Column("commitment", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "attempt"),
    )
    op.create_table(
        "referee_rulings",
        sa.Column("check_id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("rows_limit", sa.Integer(), nullable=False),
        sa.Column("output_sha", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("check_id"),
    )
    with op.batch_alter_table("referee_rulings", schema=None) as batch_op:
        batch_op.create_index("ix_referee_state", ["state"], unique=False)

    op.create_table(
        "slashes",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=42), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("amount_wei", WEI, nullable=False),
        sa.Column("taken_wei", WEI, nullable=True),
        sa.Column("beneficiary", sa.String(length=42), nullable=False),
        sa.Column("correct_output", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("executable_ms", sa.BigInteger(), nullable=True),
        sa.Column("outbox_key", sa.String(length=200), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "attempt"),
    )
    with op.batch_alter_table("slashes", schema=None) as batch_op:
        batch_op.create_index("ix_slashes_job", ["job_id"], unique=False)
        batch_op.create_index("ix_slashes_node", ["node", "state"], unique=False)

    op.create_table(
        "submitter_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("submitter_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_submitter_sessions_address", ["address", "expires_ms"], unique=False)

    op.create_table(
        "trust_earnings",
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("submitter", sa.String(length=42), nullable=False),
        sa.Column("earned_wei", WEI, nullable=False),
        sa.Column("results", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("address", "submitter"),
    )
    op.create_table(
        "upload_days",
        sa.Column("owner", sa.String(length=42), nullable=False),
        sa.Column("day", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "day"),
    )
    op.create_table(
        "used_nonces",
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("nonce"),
    )
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["address"],
            ["nodes.address"],
        ),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("job_created_ms", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("device", sa.String(length=16), nullable=False),
        sa.Column("min_memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("model_sha", sa.String(length=64), nullable=True),
        sa.Column("model_size", sa.BigInteger(), nullable=True),
        sa.Column("input_sha", sa.String(length=64), nullable=False),
        sa.Column("input_size", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("memory_limit_bytes", sa.BigInteger(), nullable=False),
        sa.Column("time_limit_ms", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=42), nullable=True),
        sa.Column("leased_ms", sa.BigInteger(), nullable=True),
        sa.Column("deadline_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_failed_node", sa.String(length=42), nullable=True),
        sa.Column("last_failed_ms", sa.BigInteger(), nullable=True),
        sa.Column("output_sha", sa.String(length=64), nullable=True),
        sa.Column("output_size", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.job_id"],
        ),
        sa.PrimaryKeyConstraint("task_id"),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index("ix_tasks_job", ["job_id", "idx"], unique=False)
        batch_op.create_index("ix_tasks_pending", ["state", "job_created_ms", "idx"], unique=False)

    op.create_table(
        "training_audits",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("round_no", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=42), nullable=False),
        sa.Column("output_sha", sa.String(length=64), nullable=False),
        sa.Column("segment", sa.Integer(), nullable=False),
        sa.Column("steps", sa.Text(), nullable=False),
        sa.Column("revealed", sa.Text(), nullable=False),
        sa.Column("max_bytes", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("deadline_ms", sa.BigInteger(), nullable=False),
        sa.Column("settled_ms", sa.BigInteger(), nullable=True),
        sa.Column("replay_ms", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.job_id"],
        ),
        sa.PrimaryKeyConstraint("task_id", "attempt"),
    )
    with op.batch_alter_table("training_audits", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_audits_job_id"), ["job_id"], unique=False)

    op.create_table(
        "training_rounds",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("round_no", sa.Integer(), nullable=False),
        sa.Column("closed_ms", sa.BigInteger(), nullable=False),
        sa.Column("workers", sa.Integer(), nullable=False),
        sa.Column("slots", sa.Text(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=True),
        sa.Column("eval_loss", sa.Float(), nullable=True),
        sa.Column("eval_accuracy", sa.Float(), nullable=True),
        sa.Column("bytes_up", sa.BigInteger(), nullable=False),
        sa.Column("weights_sha", sa.String(length=64), nullable=False),
        sa.Column("weights_size", sa.BigInteger(), nullable=False),
        sa.Column("momentum_sha", sa.String(length=64), nullable=False),
        sa.Column("momentum_size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.job_id"],
        ),
        sa.PrimaryKeyConstraint("job_id", "round_no"),
    )


def downgrade() -> None:
    op.drop_table("training_rounds")
    with op.batch_alter_table("training_audits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_audits_job_id"))

    op.drop_table("training_audits")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_pending")
        batch_op.drop_index("ix_tasks_job")

    op.drop_table("tasks")
    op.drop_table("sessions")
    op.drop_table("used_nonces")
    op.drop_table("upload_days")
    op.drop_table("trust_earnings")
    with op.batch_alter_table("submitter_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_submitter_sessions_address")

    op.drop_table("submitter_sessions")
    with op.batch_alter_table("slashes", schema=None) as batch_op:
        batch_op.drop_index("ix_slashes_node")
        batch_op.drop_index("ix_slashes_job")

    op.drop_table("slashes")
    with op.batch_alter_table("referee_rulings", schema=None) as batch_op:
        batch_op.drop_index("ix_referee_state")

    op.drop_table("referee_rulings")
    op.drop_table("receipts")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_state")

    op.drop_table("outbox")
    op.drop_table("nodes")
    op.drop_table("node_reputation")
    op.drop_table("node_earnings")
    op.drop_table("meta")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_submitter"))

    op.drop_table("jobs")
    op.drop_table("job_prices")
    op.drop_table("job_policies")
    op.drop_table("failure_claims")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_job_seq")

    op.drop_table("events")
    op.drop_table("epochs")
    op.drop_table("epoch_earnings")
    with op.batch_alter_table("credits", schema=None) as batch_op:
        batch_op.drop_index("ix_credits_job")
        batch_op.drop_index("ix_credits_epoch")

    op.drop_table("credits")
    with op.batch_alter_table("checks", schema=None) as batch_op:
        batch_op.drop_index("ix_checks_root")
        batch_op.drop_index("ix_checks_job")

    op.drop_table("checks")
    op.drop_table("check_exclusions")
    op.drop_table("check_assignments")
    op.drop_table("canary_plans")
    with op.batch_alter_table("blob_owners", schema=None) as batch_op:
        batch_op.drop_index("ix_blob_owners_owner")

    op.drop_table("blob_owners")
