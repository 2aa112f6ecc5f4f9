"""Ledger tables: job prices, node credits, epochs of earnings roots, the chain outbox, slashes."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, LargeBinary, String, Table, Text, UniqueConstraint

from coordinator.db.metadata import metadata
from coordinator.db.wei import Wei

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

# Decoys (services/verification/decoys.py): tasks of a check's m rows carved out of a job's shards,
# paid by rows: one reward with probability rows / unit_rows, drawn once per attempt when paid.
decoys = Table(
    "decoys",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("job_id", String(64), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("unit_rows", Integer, nullable=False),  # the rows one reward pays for (the job's shard rows)
    Column("drawn_attempt", Integer, nullable=False, default=-1),  # the attempt last drawn for; -1 none
    Column("won", Boolean, nullable=False, default=False),  # that draw's outcome
    Index("ix_decoys_job", "job_id"),
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

# A slash asked of NodeRegistry with a caught node's signed receipt (repositories/ledger/slashing).
slashes = Table(
    "slashes",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("node", String(42), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("amount_wei", Wei, nullable=False),  # asked for; the contract caps it at the node's stake
    Column("taken_wei", Wei),  # from the SlashProposed event (after the contract's cap; NULL: not known)
    Column("beneficiary", String(42), nullable=False),
    Column("correct_output", String(64), nullable=False),
    # queued → proposed → confirmed (executed after the delay) | vetoed (by the guardian);
    # queued → failed (a revert: the error names why, e.g. EvidenceAlreadyUsed)
    Column("state", String(16), nullable=False),
    Column("executable_ms", BigInteger),  # when the proposal can be executed (chain time, ms)
    Column("outbox_key", String(200), nullable=False),
    Column("tx_hash", String(66)),
    Column("error", Text, nullable=False, default=""),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_slashes_node", "node", "state"),
    Index("ix_slashes_job", "job_id"),
)
