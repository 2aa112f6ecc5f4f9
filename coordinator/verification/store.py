"""The verification queries the runtime needs, as a mixin of the coordinator's State."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from coordinator.storage import schema as s
from coordinator.verification import assign, records, referee
from coordinator.verification.schema import job_policies, reputation
from tensorgrid.types import NodeStatus


@dataclass(frozen=True)
class CheckInfo:
    """What comparing a check task's output needs."""

    check_id: str
    subject_output: str
    rows: list[int]
    earlier: list[tuple[str, str]]  # (checker, output sha) of the chain so far


@dataclass(frozen=True)
class Reputation:
    consecutive_valid: int = 0
    verified: int = 0
    caught: int = 0


class VerificationStore:
    engine: Engine

    def _event(self, conn: Any, job_id: str, kind: str, now_ms: int, **fields: Any) -> None: ...

    def job_policy(self, job_id: str) -> tuple[dict[str, Any], int] | None:
        """The job's verification policy (as stored) and the stake its nodes need, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(job_policies).where(job_policies.c.job_id == job_id)).first()
        return (json.loads(row.policy), int(row.required_stake_wei)) if row else None

    def check_info(self, task_id: str) -> CheckInfo | None:
        with self.engine.connect() as conn:
            chk = records.get_check(conn, task_id)
            if chk is None:
                return None
            earlier = records.chain_outputs(conn, chk.root_id)
        return CheckInfo(chk.check_id, chk.subject_output, json.loads(chk.rows), earlier)

    def reputation(self, address: str) -> Reputation:
        with self.engine.connect() as conn:
            row = conn.execute(select(reputation).where(reputation.c.address == address)).first()
        return Reputation(row.consecutive_valid, row.verified, row.caught) if row else Reputation()

    def expire_checks(self, now_ms: int, wait_ms: int) -> list[str]:
        """Settle checks nobody could take as unverified; returns jobs that are now complete."""
        with self.engine.begin() as conn:
            jobs = records.expire_unplaced(conn, now_ms, wait_ms, self._event)
            return [j for j in sorted(jobs) if _complete(conn, j)]

    def reassign_checks(self, now_ms: int) -> int:
        """Draw new checkers for checks their assignee let lie; returns how many got one."""
        with self.engine.begin() as conn:
            return assign.reassign_stale(conn, now_ms)

    def pending_rulings(self) -> list[referee.RulingInfo]:
        with self.engine.connect() as conn:
            return referee.pending(conn)

    def apply_ruling(self, check_id: str, ruling: referee.Ruling, now_ms: int) -> tuple[str, bool] | None:
        """Carry out the referee's ruling: (job id, job complete) if it settled an open chain."""
        with self.engine.begin() as conn:
            job_id = referee.apply(conn, check_id, ruling, now_ms, self._event)
            return (job_id, _complete(conn, job_id)) if job_id else None

    def fail_ruling(self, check_id: str, error: str, now_ms: int) -> str | None:
        with self.engine.begin() as conn:
            return referee.fail(conn, check_id, error, now_ms, self._event)

    def job_checks(self, job_id: str) -> dict[str, int]:
        """How the job's checks ended: outcome → count (open ones under "open")."""
        from sqlalchemy import func

        c = records.checks
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(c.c.kind, c.c.state, c.c.outcome, func.count())
                .where(c.c.job_id == job_id)
                .group_by(c.c.kind, c.c.state, c.c.outcome)
            ).all()
        out: dict[str, int] = {}
        for kind, state, outcome, n in rows:
            key = f"{kind}:{outcome or state}"
            out[key] = out.get(key, 0) + int(n)
        return out


def _complete(conn: Any, job_id: str) -> bool:
    job = conn.execute(
        select(s.jobs.c.tasks_done, s.jobs.c.tasks_total, s.jobs.c.state).where(s.jobs.c.job_id == job_id)
    ).one()
    return bool(
        job.tasks_done == job.tasks_total
        and job.state in ("queued", "running")
        and records.open_checks(conn, job_id) == 0
    )


def with_reputation(status: NodeStatus, rep: Reputation) -> NodeStatus:
    import dataclasses

    return dataclasses.replace(
        status, consecutive_valid=rep.consecutive_valid, verified=rep.verified, caught=rep.caught
    )


job_complete = _complete
