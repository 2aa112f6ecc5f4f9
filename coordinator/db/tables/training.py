"""The round manager's table, on the coordinator's shared metadata (so create_all makes it).

One row per closed round of a training job. The open round is the one after the last row
(round 0 when there is none), and it starts from that row's weights and momentum: a
restarted coordinator reads its whole position from here, and the primary key makes closing
a round a once-only act, even with several replicas.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, ForeignKey, Integer, String, Table, Text

from coordinator.db.metadata import metadata

training_rounds = Table(
    "training_rounds",
    metadata,
    Column("job_id", String(64), ForeignKey("jobs.job_id"), primary_key=True),
    Column("round_no", Integer, primary_key=True),
    Column("closed_ms", BigInteger, nullable=False),
    Column("workers", Integer, nullable=False),
    Column("slots", Text, nullable=False),  # JSON list of the worker slots whose results were averaged
    Column("rows", Integer, nullable=False),
    Column("train_loss", Float),
    Column("eval_loss", Float),
    Column("eval_accuracy", Float),
    Column("bytes_up", BigInteger, nullable=False),
    Column("weights_sha", String(64), nullable=False),  # global weights after this round
    Column("weights_size", BigInteger, nullable=False),
    Column("momentum_sha", String(64), nullable=False),
    Column("momentum_size", BigInteger, nullable=False),
)

# One row per audited training result: the checkpoints its node must reveal, what it revealed
# so far and how the audit ended. Written in the transaction that accepts the result, so an
# audit survives a restart; state: "pending" → "passed" | "failed" | "expired" | "unverified".
training_audits = Table(
    "training_audits",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("job_id", String(64), ForeignKey("jobs.job_id"), nullable=False, index=True),
    Column("round_no", Integer, nullable=False),
    Column("node", String(42), nullable=False),
    Column("output_sha", String(64), nullable=False),
    Column("segment", Integer, nullable=False),  # index j into the result's checkpoint_steps: replay j → j+1
    Column("steps", Text, nullable=False),  # JSON list of the checkpoint steps to reveal
    Column("revealed", Text, nullable=False),  # JSON {step: sha256} of the checkpoints received
    Column("max_bytes", BigInteger, nullable=False),  # size limit of one revealed checkpoint
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("deadline_ms", BigInteger, nullable=False),
    Column("settled_ms", BigInteger),
    Column("replay_ms", Integer),  # coordinator time spent replaying and checking (benchmarks)
)
