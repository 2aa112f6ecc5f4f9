"""Core tables: nodes and their sessions, jobs, tasks, failure claims, receipts and the job event log."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)

from coordinator.db.metadata import metadata

CHECK_KIND = "spotcheck"  # the tasks-table kind of every check task
CHECK_LEASED_AS = "inference"  # what a node is told a check task is: it looks like any inference task
# Task states of a task not finished yet: waiting for a node, held by one, or its input contested
# and waiting for the referee's run (repositories.claims). Ending a job cancels tasks in these.
OPEN_TASK_STATES = ("pending", "leased", "contested")

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
    # when the session opened (a node's register): leases the node was granted before it and its
    # heartbeats in this session do not list were left behind by a restart (repositories.heartbeats).
    # NULL for sessions opened before revision 0006: nothing is released for them.
    Column("started_ms", BigInteger, nullable=True),
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
    # the attempt of that lease when it expired or a restart left it behind (NULL: it ended otherwise,
    # or before revision 0007): its node's result for it is still taken (repositories.tasks.lost_lease)
    Column("lost_attempt", Integer),
    Column("output_sha", String(64)),
    Column("output_size", BigInteger),
    # when the referee could not decide the review of the task's claims (repositories.claims):
    # from then on its claimants may not lease it and more distinct nodes settle it; NULL: never
    Column("undecided_ms", BigInteger),
    Index("ix_tasks_pending", "state", "job_created_ms", "idx"),
    Index("ix_tasks_job", "job_id", "idx"),
    # the leases a node holds, counted at every lease against its cap. Not a partial index (state =
    # 'leased'): SQLite re-prepares every statement on tasks that binds a state while one exists.
    Index("ix_tasks_node_state", "node", "state"),
)

# Nodes that reported a task's input invalid or unsafe. One node's word does not count against
# the task; a second node's confirms it (repositories.claims).
failure_claims = Table(
    "failure_claims",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("node", String(42), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("claimed_ms", BigInteger, nullable=False),
    Column("confirmed", Boolean, nullable=False, default=False),
    # the referee's run of the task the claims are about (repositories.claims): NULL none yet,
    # "clean" it ran (the claims were false), "failed" it failed too (the claims confirmed)
    Column("verdict", String(16), nullable=True),
    # a claim the referee's failed run confirmed is paid for the work the failure took
    # (repositories.ledger.claim_pay): how far that run got (rows or inner steps before the
    # failure, of the task's), and the draw of its one reward with probability done / work
    # (NULL: not drawn, the claim earns nothing)
    Column("work_done", Integer, nullable=True),
    Column("work_total", Integer, nullable=True),
    Column("won", Boolean, nullable=True),
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
