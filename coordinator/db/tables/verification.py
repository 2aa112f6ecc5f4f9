"""Verification tables: job policies, checks, checker draws, referee rulings, reputation."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

from coordinator.db.metadata import metadata
from coordinator.db.wei import Wei

# A job's resolved policy, written with the job (so no result can arrive before it).
job_policies = Table(
    "job_policies",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("policy", Text, nullable=False),  # the VerificationSpec as JSON
    Column("required_stake_wei", Wei, nullable=False),
)

# One row per check task. A spot-check or canary is a chain's root; a tiebreak names its root.
checks = Table(
    "checks",
    metadata,
    Column("check_id", String(64), primary_key=True),  # the check task's task_id
    Column("root_id", String(64), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # spotcheck | canary | tiebreak
    Column("subject_task", String(64), nullable=False),
    Column("subject_attempt", Integer, nullable=False),
    Column("subject_node", String(42), nullable=False),
    Column("subject_output", String(64), nullable=False),
    Column("rows", Text, nullable=False),  # JSON list of the subject's sampled row indices
    # open (waiting for its checker) → disputed (disagreed; a tiebreak is open) → done
    Column("state", String(16), nullable=False),
    Column("outcome", String(16), nullable=False, default=""),  # verified | caught | unverified | …
    Column("checker", String(42)),
    Column("checker_output", String(64)),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_checks_job", "job_id", "state"),
    Index("ix_checks_root", "root_id"),
)

# Nodes that may not take a check task: the node checked and everyone who checked it already.
check_exclusions = Table(
    "check_exclusions",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("node", String(42), primary_key=True),
)

# The one node that may lease a check task, and until when it may before another is drawn.
check_assignments = Table(
    "check_assignments",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("node", String(42), nullable=False),
    Column("until_ms", BigInteger, nullable=False),
)

# A disputed check the coordinator re-executes itself: it rules who was right.
referee_rulings = Table(
    "referee_rulings",
    metadata,
    Column("check_id", String(64), primary_key=True),
    Column("job_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # pending → ruled | failed
    Column("rows_limit", Integer, nullable=False, default=0),  # re-run the first n rows (0: all)
    Column("output_sha", String(64)),  # the referee's output rows
    Column("error", Text, nullable=False, default=""),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_referee_state", "state"),
)

reputation = Table(
    "node_reputation",
    metadata,
    Column("address", String(42), primary_key=True),
    Column("consecutive_valid", Integer, nullable=False, default=0),
    Column("verified", Integer, nullable=False, default=0),
    Column("caught", Integer, nullable=False, default=0),
)

# Reward of verified results on paid jobs, per node and submitter, since the node was last
# caught (or reset): what trust is made of (repositories/verification/trust.py).
trust_earnings = Table(
    "trust_earnings",
    metadata,
    Column("address", String(42), primary_key=True),
    Column("submitter", String(42), primary_key=True),
    Column("earned_wei", Wei, nullable=False),
    Column("results", Integer, nullable=False, default=0),
)

# A canary prepared when its spot-check was opened: if the check verifies the result, the
# shard is re-leased whole, its rows shuffled into a new input (a hash no node has seen).
canary_plans = Table(
    "canary_plans",
    metadata,
    Column("check_id", String(64), primary_key=True),  # the spot-check (chain root) it follows
    Column("canary_id", String(64), nullable=False),
    Column("input_sha", String(64), nullable=False),
    Column("input_size", BigInteger, nullable=False),
    Column("rows", Text, nullable=False),  # JSON: the subject's row at each canary input row
)
