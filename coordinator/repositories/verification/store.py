"""The verification queries the runtime needs, each its own transaction."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from coordinator.db import schema as s
from coordinator.db.events import append_event
from coordinator.repositories.jobs import job_complete
from coordinator.repositories.verification import assign, canaries, rulings, unplaced
from coordinator.repositories.verification import checks as records
from coordinator.repositories.verification.trust import streak_for_job
from tensorgrid.types import BlobRef, NodeStatus


@dataclass(frozen=True)
class CheckInfo:
    """What comparing a check task's output needs."""

    check_id: str
    subject_output: str
    rows: list[int]
    earlier: list[tuple[str, str]]  # (checker, output sha) of the chain so far
    cuda: tuple[str, ...] = ()  # of the subject, the earlier checkers and this one: those on CUDA
    subject_node: str = ""


@dataclass(frozen=True)
class Reputation:
    consecutive_valid: int = 0
    verified: int = 0
    caught: int = 0


class VerificationRepository:
    """Verification over one engine; each method is its own transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def job_policy(self, job_id: str) -> tuple[dict[str, Any], int] | None:
        """The job's verification policy (as stored) and the stake its nodes need, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(s.job_policies).where(s.job_policies.c.job_id == job_id)).first()
        return (json.loads(row.policy), int(row.required_stake_wei)) if row else None

    def check_info(self, task_id: str, checker: str = "") -> CheckInfo | None:
        """A check task's comparison; subject_output "" for a canary leased early and not yet
        armed (its output is parked: canaries.py)."""
        with self.engine.connect() as conn:
            chk = records.get_check(conn, task_id)
            if chk is None:
                return None
            return _check_info(conn, chk, checker, records.chain_outputs(conn, chk.root_id))

    def parked_canaries(self, limit: int = 20) -> list[tuple[CheckInfo, str, str]]:
        """(comparison, checker, its output) of armed canaries whose output came before they were armed."""
        c = records.checks.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(records.checks)
                .where(c.kind == records.CANARY, c.state == "open", c.checker_output.is_not(None))
                .limit(limit)
            ).all()
            return [(_check_info(conn, chk, chk.checker, []), chk.checker, chk.checker_output) for chk in rows]

    def settle_parked(
        self, check_id: str, checker: str, output: str, verdict: records.Verdict, now_ms: int
    ) -> tuple[str, bool] | None:
        """Apply an armed canary's verdict on its parked output: (job id, job complete), or None if
        it was settled meanwhile."""
        with self.engine.begin() as conn:
            chk = records.get_check(conn, check_id)
            if chk is None or chk.state != "open" or chk.checker_output != output:
                return None
            records.apply_verdict(conn, check_id, checker, BlobRef(output, 0), verdict, now_ms, append_event)
            return chk.job_id, job_complete(conn, chk.job_id)

    def lease_canary_early(self, task_id: str, attempt: int, node: str, plan: records.CheckPlan, now_ms: int) -> bool:
        with self.engine.begin() as conn:
            return records.lease_canary_early(conn, task_id, attempt, node, plan, now_ms)

    def void_canaries(self, job_id: str, task_id: str, attempt: int, canary_id: str = "") -> None:
        """Canaries leased early for the shard's leases before `attempt`, and canary_id (a result
        that was not checked: its canary has nothing to follow)."""
        with self.engine.begin() as conn:
            canaries.void_earlier(conn, job_id, task_id, attempt)
            if canary_id:
                canaries.void(conn, [canary_id])

    def streak(self, address: str, job_id: str, trust_after: int) -> int:
        """The node's streak as the job's policy sees it: 0 unless trusted for this job (trust.py)."""
        with self.engine.connect() as conn:
            return streak_for_job(conn, address, job_id, trust_after)

    def reputation(self, address: str) -> Reputation:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.reputation).where(s.reputation.c.address == address)).first()
        return Reputation(row.consecutive_valid, row.verified, row.caught) if row else Reputation()

    def expire_checks(self, now_ms: int, wait_ms: int) -> list[str]:
        """Settle checks nobody could take as unverified; returns jobs that are now complete."""
        with self.engine.begin() as conn:
            jobs = unplaced.expire_unplaced(conn, now_ms, wait_ms, append_event)
            return [j for j in sorted(jobs) if job_complete(conn, j)]

    def reassign_checks(self, now_ms: int, patience_ms: int = 0) -> int:
        """Draw new checkers for checks their assignee let lie (a busy one keeps its check for up
        to patience_ms after the check opened); returns how many got one."""
        with self.engine.begin() as conn:
            return assign.reassign_stale(conn, now_ms, patience_ms=patience_ms)

    def leased_shard(self, task_id: str, attempt: int, node: str) -> rulings.LeasedShard | None:
        with self.engine.connect() as conn:
            return rulings.leased_shard(conn, task_id, attempt, node)

    def pending_rulings(self) -> list[rulings.RulingInfo]:
        with self.engine.connect() as conn:
            return rulings.pending(conn)

    def ahead(self, check_id: str) -> rulings.Ahead | None:
        """What confirming this open check will re-run (rulings.ahead)."""
        with self.engine.connect() as conn:
            return rulings.ahead(conn, check_id)

    def apply_ruling(self, check_id: str, ruling: rulings.Ruling, now_ms: int) -> tuple[str, bool] | None:
        """Carry out the referee's ruling: (job id, job complete) if it settled an open chain."""
        with self.engine.begin() as conn:
            job_id = rulings.apply(conn, check_id, ruling, now_ms, append_event)
            return (job_id, job_complete(conn, job_id)) if job_id else None

    def fail_ruling(self, check_id: str, error: str, now_ms: int) -> str | None:
        with self.engine.begin() as conn:
            return rulings.fail(conn, check_id, error, now_ms, append_event)

    def job_checks(self, job_id: str) -> dict[str, int]:
        """How the job's checks ended: outcome → count (open ones under "open")."""
        c = records.checks
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(c.c.kind, c.c.state, c.c.outcome, func.count())
                .where(c.c.job_id == job_id, c.c.state != canaries.AHEAD)  # not yet a check of a result
                .group_by(c.c.kind, c.c.state, c.c.outcome)
            ).all()
        out: dict[str, int] = {}
        for kind, state, outcome, n in rows:
            key = f"{kind}:{outcome or state}"
            out[key] = out.get(key, 0) + int(n)
        return out


def _check_info(conn: Connection, chk: Any, checker: str, earlier: list[tuple[str, str]]) -> CheckInfo:
    nodes = [chk.subject_node, checker, *(node for node, _ in earlier)]
    n = s.nodes.c
    kinds = conn.execute(select(n.address, n.device_kind).where(n.address.in_(nodes))).all()
    cuda = tuple(sorted(r.address for r in kinds if str(r.device_kind).startswith("cuda")))
    return CheckInfo(chk.check_id, chk.subject_output, json.loads(chk.rows), earlier, cuda, chk.subject_node)


def with_reputation(status: NodeStatus, rep: Reputation) -> NodeStatus:
    return dataclasses.replace(
        status, consecutive_valid=rep.consecutive_valid, verified=rep.verified, caught=rep.caught
    )


def reputations(conn: Any) -> dict[str, Reputation]:
    """Every node's reputation record (nodes without one have none yet)."""
    r = s.reputation
    return {row.address: Reputation(row.consecutive_valid, row.verified, row.caught) for row in conn.execute(select(r))}
