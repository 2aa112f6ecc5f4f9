"""Whether two nodes' agreement in a check chain needs the referee's confirmation, and how many
rows the referee then re-runs (checks.apply_verdict asks; rulings.ahead re-runs them early)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, select

from coordinator.db import schema as s
from coordinator.repositories.verification.trust import streak_for_job
from tensorgrid.spec import VerificationSpec
from tensorgrid.spec.verification import detection_rows

checks, job_policies = s.checks, s.job_policies


def needs_confirmation(conn: Connection, chk: Any, checker: str) -> bool:
    """Whether the agreement of subject and checker needs the referee's confirmation.

    It does unless BOTH are trusted for this job (trust.streak_for_job): a Sybil pair, or a
    trusted node vouching for a new one, could agree on a lie. A canary's subject was
    verified already, so a canary never needs it.
    """
    if root_kind(conn, chk.root_id) == "canary":
        return False
    raw = conn.execute(select(job_policies.c.policy).where(job_policies.c.job_id == chk.job_id)).scalar()
    trust_after = int(json.loads(raw).get("trust_after", 10)) if raw else 10
    if trust_after <= 0:
        return False
    streaks = (streak_for_job(conn, node, chk.job_id, trust_after) for node in (chk.subject_node, checker))
    return min(streaks) < trust_after


def confirm_rows(conn: Connection, chk: Any) -> int:
    """Rows the referee re-runs to confirm an agreement: what the job's policy asks of one
    spot-check of the subject's task (detection_rows: all of a spot-check's rows), never more
    than the check has (under replicate, a spot-check's share of the whole shard)."""
    raw = conn.execute(select(job_policies.c.policy).where(job_policies.c.job_id == chk.job_id)).scalar()
    tasks = conn.execute(select(s.jobs.c.tasks_total).where(s.jobs.c.job_id == chk.job_id)).scalar()
    subject_rows = conn.execute(select(s.tasks.c.rows).where(s.tasks.c.task_id == chk.subject_task)).scalar()
    rows = len(json.loads(chk.rows))
    spec = VerificationSpec(**{**json.loads(raw or "{}"), "mode": "spotcheck"})
    return max(1, min(rows, detection_rows(spec, int(tasks or 1), int(subject_rows or rows))))


def root_kind(conn: Connection, root_id: str) -> str:
    """The kind of the chain's first check (checks.SPOTCHECK, checks.CANARY, ...)."""
    return str(conn.execute(select(checks.c.kind).where(checks.c.check_id == root_id)).scalar_one())
