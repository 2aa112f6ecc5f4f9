"""Tables of the coordinator's state. The same schema runs on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from coordinator.storage.wei import Wei

SCHEMA_VERSION = 1
metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

nodes = Table(
    "nodes",
    metadata,
    Column("address", String(42), primary_key=True),
    Column("capabilities", Text, nullable=False),
    Column("device_kind", String(16), nullable=False),
    Column("memory_bytes", BigInteger, nullable=False),
    Column("registered_ms", BigInteger, nullable=False),
    Column("last_seen_ms", BigInteger, nullable=False),
    Column("draining", Boolean, nullable=False, default=False),
    Column("completed", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("rejections", Integer, nullable=False, default=0),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("backoff_until_ms", BigInteger, nullable=False, default=0),
)

sessions = Table(
    "sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("address", String(42), ForeignKey("nodes.address"), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
)

used_nonces = Table(
    "used_nonces",
    metadata,
    Column("nonce", String(128), primary_key=True),
    Column("expires_ms", BigInteger, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("submitter", String(42), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("spec_json", LargeBinary, nullable=False),
    Column("spec_hash", String(64), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("tasks_total", Integer, nullable=False),
    Column("tasks_done", Integer, nullable=False, default=0),
    Column("task_failures", Integer, nullable=False, default=0),
    Column("result_sha", String(64)),
    Column("result_size", BigInteger),
    Column("error", Text, nullable=False, default=""),
    Column("event_seq", Integer, nullable=False, default=0),
)

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("job_id", String(64), ForeignKey("jobs.job_id"), nullable=False),
    Column("idx", Integer, nullable=False),
    # pending → leased → done; or failed once max_attempts is spent; cancelled with its job
    Column("state", String(16), nullable=False),
    Column("job_created_ms", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("device", String(16), nullable=False),
    Column("min_memory_bytes", BigInteger, nullable=False),
    Column("model_sha", String(64)),
    Column("model_size", BigInteger),
    Column("input_sha", String(64), nullable=False),
    Column("input_size", BigInteger, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("settings", Text, nullable=False),
    Column("memory_limit_bytes", BigInteger, nullable=False),
    Column("time_limit_ms", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("attempt", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("node", String(42)),
    Column("leased_ms", BigInteger),
    Column("deadline_ms", BigInteger),
    Column("last_failed_node", String(42)),
    Column("last_failed_ms", BigInteger),
    Column("output_sha", String(64)),
    Column("output_size", BigInteger),
    Index("ix_tasks_pending", "state", "job_created_ms", "idx"),
    Index("ix_tasks_job", "job_id", "idx"),
)

receipts = Table(
    "receipts",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("node", String(42), nullable=False),
    Column("input_hash", String(64), nullable=False),
    Column("output_hash", String(64), nullable=False),
    Column("commitment", String(64), nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("received_ms", BigInteger, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(24), nullable=False),
    Column("time_ms", BigInteger, nullable=False),
    Column("task_index", Integer, nullable=False, default=0),
    Column("node", String(42), nullable=False, default=""),
    Column("message", Text, nullable=False, default=""),
    Column("tasks_done", Integer, nullable=False, default=0),
    Column("tasks_total", Integer, nullable=False, default=0),
    Column("state", String(16), nullable=False),
    Index("ix_events_job_seq", "job_id", "seq", unique=True),
)


# -- ledger (coordinator/ledger): credits, epochs and the chain outbox ------------------------

job_prices = Table(
    "job_prices",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("reward_per_task_wei", Wei, nullable=False),
    Column("budget_wei", Wei, nullable=False),
    # running total of the job's live (not void) credits, kept <= budget_wei
    Column("credited_wei", Wei, nullable=False),
    Column("void_reason", Text, nullable=False, default=""),
)

credits = Table(
    "credits",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node", String(42), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("task_id", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("amount_wei", Wei, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    # NULL until an epoch charges it; back to NULL if that epoch's post is unwound
    Column("epoch", Integer),
    # never payable (its job's escrow refused the charge); excluded from every tree
    Column("void", Boolean, nullable=False, default=False),
    UniqueConstraint("task_id", "attempt", name="uq_credits_task_attempt"),
    Index("ix_credits_epoch", "epoch", "void"),
    Index("ix_credits_job", "job_id", "epoch"),
)

node_earnings = Table(
    "node_earnings",
    metadata,
    Column("node", String(42), primary_key=True),
    Column("earned_wei", Wei, nullable=False),  # all live credits
    Column("charged_wei", Wei, nullable=False),  # cumulative amount in the newest epoch's tree
)

epochs = Table(
    "epochs",
    metadata,
    Column("epoch", Integer, primary_key=True, autoincrement=False),
    Column("root", String(64), nullable=False),
    # posting → confirmed (or revoked later); failed halts the outbox until resolved
    Column("state", String(16), nullable=False),
    Column("total_wei", Wei, nullable=False),  # sum of the tree's cumulative amounts
    Column("charged_wei", Wei, nullable=False),  # what this epoch moves from escrows to the pool
    Column("outbox_key", String(200), nullable=False),
    Column("tx_hash", String(66)),
    Column("error", Text, nullable=False, default=""),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

epoch_earnings = Table(
    "epoch_earnings",
    metadata,
    Column("epoch", Integer, primary_key=True, autoincrement=False),
    Column("node", String(42), primary_key=True),
    Column("cumulative_wei", Wei, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False, unique=True),
    Column("action", String(32), nullable=False),
    Column("payload", Text, nullable=False),
    # pending → sent → confirmed | failed; cancelled when superseded before it was signed
    Column("state", String(16), nullable=False),
    Column("blocking", Boolean, nullable=False, default=False),  # a failure that halts the queue
    Column("nonce", BigInteger),
    Column("tx_hash", String(66)),
    Column("raw_tx", LargeBinary),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
    Column("next_try_ms", BigInteger, nullable=False, default=0),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_outbox_state", "state", "id"),
)

# A slash asked of NodeRegistry with a caught node's signed receipt (coordinator/ledger/slashing).
slashes = Table(
    "slashes",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("node", String(42), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("amount_wei", Wei, nullable=False),  # asked for; the contract caps it at the node's stake
    Column("taken_wei", Wei),  # from the Slashed event once confirmed (NULL: not known)
    Column("beneficiary", String(42), nullable=False),
    Column("correct_output", String(64), nullable=False),
    # queued → confirmed | failed (a revert: the error names why, e.g. EvidenceAlreadyUsed)
    Column("state", String(16), nullable=False),
    Column("outbox_key", String(200), nullable=False),
    Column("tx_hash", String(66)),
    Column("error", Text, nullable=False, default=""),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_slashes_node", "node", "state"),
    Index("ix_slashes_job", "job_id"),
)
