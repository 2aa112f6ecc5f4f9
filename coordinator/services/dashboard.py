"""What the web dashboard shows, read through the repositories as plain JSON-ready dicts.

Read-only: every method here only reads (one short transaction or a few), and is blocking, so
the api runs it on the runtime's database threads. Who may see which job is not decided here:
the api asks services.access first and hands over only jobs the caller may see.
Wei amounts are decimal strings (exact: JavaScript numbers are not).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from coordinator.repositories.ledger import statements
from coordinator.repositories.store import Store
from coordinator.repositories.training.rounds import round_history
from coordinator.services.report import Reports
from tensorgrid.report import verification_line
from tensorgrid.types import JobInfo, JobVerification

StakeOf = Callable[[str], int | None]
_ROUND_FIELDS = ("train_loss", "eval_loss", "eval_accuracy", "workers", "rows", "bytes_up", "closed_ms")


def _wei(value: int | None) -> str | None:
    return None if value is None else str(value)


def job_summary(job: JobInfo) -> dict[str, Any]:
    """One row of the jobs list: identity, state and progress."""
    return {
        "job_id": job.job_id,
        "kind": job.kind,
        "state": job.state.value,
        "tasks_done": job.tasks_done,
        "tasks_total": job.tasks_total,
        "task_failures": job.task_failures,
        "created_ms": job.created_ms,
        "updated_ms": job.updated_ms,
        "error": job.error,
    }


def _verification(v: JobVerification | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {
        "summary": verification_line(v),  # the line `tensorgrid job status` prints
        "mode": v.mode,
        "checks": dict(v.checks),
        "detection": v.detection,
        "required_stake_wei": _wei(v.required_stake_wei),
        "slashes": v.slashes,
        "slashed_wei": _wei(v.slashed_wei),
        "fee_budget_wei": _wei(v.fee_budget_wei),
        "fee_paid_wei": _wei(v.fee_paid_wei),
        "decoys": v.decoys,
        "decoys_drawn": v.decoys_drawn,
        "decoy_paid_wei": _wei(v.decoy_paid_wei),
        "claims_drawn": v.claims_drawn,
        "claims_paid_wei": _wei(v.claims_paid_wei),
    }


def _spec(job: JobInfo) -> Any:
    """The job's spec as its submitter wrote it (any of its strings may be hostile markup: the
    page inserts them as text)."""
    try:
        return json.loads(job.spec_json)
    except (ValueError, UnicodeDecodeError):
        return None


class DashboardData:
    """The dashboard's reads over one store; methods are synchronous (run them off the loop)."""

    def __init__(self, store: Store, reports: Reports, stake_of: StakeOf | None = None) -> None:
        self.store = store
        self.reports = reports
        self.stake_of = stake_of

    def jobs(self, submitter: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` jobs of `submitter` ("" : every job, for the operator)."""
        return [job_summary(j) for j in self.store.jobs.list_jobs(submitter, limit)]

    def job_detail(self, job: JobInfo) -> dict[str, Any]:
        """Everything the job page shows: summary, spec, result, verification, settlement, rounds."""
        job = self.reports.with_verification(job)
        with self.store.engine.connect() as conn:
            settlement = statements.job_settlement(conn, job.job_id)
        rounds = [
            {"round": int(r["round_no"]), **{k: r[k] for k in _ROUND_FIELDS}}
            for r in round_history(self.store.engine, job.job_id)
        ]
        return {
            **job_summary(job),
            "submitter": job.submitter,
            "spec_hash": job.spec_hash,
            "spec": _spec(job),
            "result": None if job.result is None else {"sha256": job.result.sha256, "size": job.result.size},
            "verification": _verification(job.verification),
            "settlement": {k: _wei(v) if k.endswith("_wei") else v for k, v in settlement.items()},
            "rounds": rounds,
        }

    def nodes(self) -> list[dict[str, Any]]:
        """Every node with its record, reputation, stake (as last read from the chain, when the
        coordinator settles on one) and earnings."""
        nodes = self.store.list_nodes_with_reputation()
        with self.store.engine.connect() as conn:
            earned = statements.node_earnings(conn)
        out = []
        for n in nodes:
            earned_wei, charged_wei = earned.get(n.address, (0, 0))
            stake = self.stake_of(n.address) if self.stake_of is not None else None
            out.append(
                {
                    "address": n.address,
                    "device_kind": n.device_kind,
                    "last_seen_ms": n.last_seen_ms,
                    "draining": n.draining,
                    "completed": n.completed,
                    "failures": n.failures,
                    "rejections": n.rejections,
                    "verified": n.verified,
                    "caught": n.caught,
                    "consecutive_valid": n.consecutive_valid,
                    "stake_wei": _wei(stake),
                    "slashed_wei": _wei(n.slashed_wei),
                    "earned_wei": _wei(earned_wei),
                    "charged_wei": _wei(charged_wei),
                }
            )
        return out
