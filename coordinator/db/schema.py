"""Every table of the coordinator, registered explicitly: `make_engine` creates exactly these.

Repositories import tables from here (`from coordinator.db import schema as s`), so no table
exists only because some module happened to be imported first.
"""

from __future__ import annotations

from sqlalchemy import Table

from coordinator.db.metadata import SCHEMA_VERSION, meta, metadata
from coordinator.db.tables.access import blob_owners, dashboard_sessions, submitter_sessions, upload_days
from coordinator.db.tables.core import (
    CHECK_KIND,
    CHECK_LEASED_AS,
    OPEN_TASK_STATES,
    events,
    failure_claims,
    jobs,
    nodes,
    receipts,
    sessions,
    tasks,
    used_nonces,
)
from coordinator.db.tables.ledger import (
    credits,
    decoys,
    epoch_earnings,
    epochs,
    job_prices,
    node_earnings,
    outbox,
    slashes,
)
from coordinator.db.tables.training import training_audits, training_rounds
from coordinator.db.tables.verification import (
    canary_plans,
    check_assignments,
    check_exclusions,
    checks,
    job_policies,
    referee_rulings,
    reputation,
    trust_earnings,
)

TABLES: tuple[Table, ...] = (
    meta,
    nodes,
    sessions,
    used_nonces,
    jobs,
    tasks,
    failure_claims,
    receipts,
    events,
    job_prices,
    decoys,
    credits,
    node_earnings,
    epochs,
    epoch_earnings,
    outbox,
    slashes,
    job_policies,
    checks,
    check_exclusions,
    check_assignments,
    referee_rulings,
    reputation,
    trust_earnings,
    canary_plans,
    training_rounds,
    training_audits,
    submitter_sessions,
    dashboard_sessions,
    blob_owners,
    upload_days,
)

__all__ = [
    "CHECK_KIND",
    "blob_owners",
    "CHECK_LEASED_AS",
    "OPEN_TASK_STATES",
    "canary_plans",
    "dashboard_sessions",
    "SCHEMA_VERSION",
    "TABLES",
    "check_assignments",
    "check_exclusions",
    "checks",
    "credits",
    "decoys",
    "epoch_earnings",
    "epochs",
    "events",
    "failure_claims",
    "job_policies",
    "job_prices",
    "jobs",
    "meta",
    "metadata",
    "node_earnings",
    "nodes",
    "outbox",
    "receipts",
    "referee_rulings",
    "reputation",
    "sessions",
    "slashes",
    "submitter_sessions",
    "tasks",
    "training_audits",
    "training_rounds",
    "trust_earnings",
    "upload_days",
    "used_nonces",
]
