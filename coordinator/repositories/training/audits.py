"""Training audits in SQL: opened with the result they audit, revealed step by step, settled once.

Opening runs inside the accept transaction (services.acceptance, through the training kind), so an accepted,
audited result always has its audit row and is never paid before it passes. Settling is
one transaction too: the audit's outcome, the node's reputation, its credit (passed) or the
"caught" event, a queued slash and the task's reissue (failed). A row settles once: a
second settle of the same audit (another replica, the round manager racing the reveal
handler) changes nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, update

from coordinator.db import schema as s
from coordinator.db.events import append_event
from coordinator.errors import NotFound, Rejected
from coordinator.repositories.ledger import credits as ledger
from coordinator.repositories.ledger.slashing import queue_slash
from coordinator.repositories.verification import checks as records
from tensorgrid.types import BlobRef

log = logging.getLogger("tensorgrid.coordinator.training")
PENDING, PASSED, FAILED, EXPIRED = "pending", "passed", "failed", "expired"
# The coordinator could not replay within its sandbox's limits: no fault of the node's, so the
# result stands and is paid, unchecked (as an inference check nobody could take passes).
UNVERIFIED = "unverified"
ta, tr = s.training_audits, s.training_rounds
AVOID_CAUGHT_MS = 10 * 60_000  # a caught node is not given the task it cheated on again for this long


@dataclass(frozen=True)
class AuditPlan:
    """Audit the result being accepted: reveal `steps`, replay checkpoint `segment` → segment+1."""

    job_id: str
    round_no: int
    segment: int
    steps: tuple[int, ...]
    max_bytes: int
    deadline_ms: int


@dataclass(frozen=True)
class Audit:
    """An audit as stored."""

    task_id: str
    attempt: int
    job_id: str
    round_no: int
    node: str
    output_sha: str
    segment: int
    steps: tuple[int, ...]
    revealed: dict[int, str]  # step → sha256 of the revealed checkpoint blob
    max_bytes: int
    state: str
    reason: str
    deadline_ms: int
    replay_ms: int | None = None

    @property
    def complete(self) -> bool:
        return set(self.steps) <= set(self.revealed)


def open_audit(
    conn: Connection, node: str, task_id: str, attempt: int, output: BlobRef, plan: AuditPlan, now_ms: int
) -> None:
    """Insert the audit of a result, in the transaction that accepts it."""
    conn.execute(
        insert(ta).values(
            task_id=task_id,
            attempt=attempt,
            job_id=plan.job_id,
            round_no=plan.round_no,
            node=node,
            output_sha=output.sha256,
            segment=plan.segment,
            steps=json.dumps(list(plan.steps)),
            revealed="{}",
            max_bytes=plan.max_bytes,
            state=PENDING,
            reason="",
            created_ms=now_ms,
            deadline_ms=plan.deadline_ms,
        )
    )


def _audit(row: Any) -> Audit:
    return Audit(
        task_id=row.task_id,
        attempt=int(row.attempt),
        job_id=row.job_id,
        round_no=int(row.round_no),
        node=row.node,
        output_sha=row.output_sha,
        segment=int(row.segment),
        steps=tuple(int(x) for x in json.loads(row.steps)),
        revealed={int(k): str(v) for k, v in json.loads(row.revealed).items()},
        max_bytes=int(row.max_bytes),
        state=row.state,
        reason=row.reason,
        deadline_ms=int(row.deadline_ms),
        replay_ms=row.replay_ms,
    )


def get_audit(engine: Engine, task_id: str, attempt: int) -> Audit | None:
    with engine.connect() as conn:
        row = conn.execute(select(ta).where(ta.c.task_id == task_id, ta.c.attempt == attempt)).first()
    return _audit(row) if row is not None else None


def job_audits(engine: Engine, job_id: str) -> list[Audit]:
    """Every audit of a job (tests, benchmarks, tools)."""
    with engine.connect() as conn:
        rows = conn.execute(select(ta).where(ta.c.job_id == job_id).order_by(ta.c.created_ms)).all()
    return [_audit(r) for r in rows]


def audit_counts(engine: Engine, job_id: str) -> dict[str, int]:
    """The job's audits by state (pending, passed, failed, expired, unverified)."""
    with engine.connect() as conn:
        rows = conn.execute(select(ta.c.state, func.count()).where(ta.c.job_id == job_id).group_by(ta.c.state)).all()
    return {str(state): int(n) for state, n in rows}


def check_reveal(audit: Audit | None, node: str, step: int, size: int, now_ms: int) -> Audit:
    """May `node` reveal this checkpoint now? Raises Rejected (or NotFound) saying why not."""
    if audit is None:
        raise NotFound("no audit of that result: reveal only the steps SubmitResult asked for")
    if audit.node != node:
        raise Rejected("that result was submitted by another node")
    if audit.state != PENDING:
        raise Rejected(f"the audit of that result is over ({audit.state})")
    if now_ms > audit.deadline_ms:
        raise Rejected("the round's deadline passed: the reveal came too late")
    if step not in audit.steps:
        raise Rejected(f"step {step} was not asked for; reveal steps {list(audit.steps)}")
    if size > audit.max_bytes:
        raise Rejected(f"a checkpoint of {size} bytes is over the limit of {audit.max_bytes} for this model")
    return audit


def record_reveal(engine: Engine, task_id: str, attempt: int, node: str, step: int, sha: str, now_ms: int) -> Audit:
    """Note a received checkpoint; returns the audit as it now stands. A step is revealed once."""
    with engine.begin() as conn:
        row = conn.execute(select(ta).where(ta.c.task_id == task_id, ta.c.attempt == attempt).with_for_update()).first()
        audit = check_reveal(_audit(row) if row is not None else None, node, step, 0, now_ms)
        if step in audit.revealed:
            if audit.revealed[step] != sha:
                raise Rejected(f"step {step} was revealed already, with other bytes")
            return audit
        revealed = {**audit.revealed, step: sha}
        conn.execute(
            update(ta)
            .where(ta.c.task_id == task_id, ta.c.attempt == attempt)
            .values(revealed=json.dumps({str(k): v for k, v in sorted(revealed.items())}))
        )
    return Audit(**{**audit.__dict__, "revealed": revealed})


def round_audits(engine: Engine, job_id: str, round_no: int) -> list[Audit]:
    with engine.connect() as conn:
        rows = conn.execute(select(ta).where(ta.c.job_id == job_id, ta.c.round_no == round_no)).all()
    return [_audit(r) for r in rows]


def result_audit_states(engine: Engine, job_id: str, first_idx: int, last_idx: int) -> dict[int, str]:
    """Task index → the audit state of its current accepted result (absent: not audited)."""
    t = s.tasks
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.c.idx, ta.c.state)
            .select_from(t.join(ta, and_(ta.c.task_id == t.c.task_id, ta.c.attempt == t.c.attempt)))
            .where(t.c.job_id == job_id, t.c.idx >= first_idx, t.c.idx < last_idx, t.c.state == "done")
        ).all()
    return {int(r.idx): r.state for r in rows}


def task_files(engine: Engine, task_id: str) -> tuple[str, str, dict[str, Any]]:
    """(train program sha, shard sha, settings) of a training task."""
    t = s.tasks
    with engine.connect() as conn:
        row = conn.execute(select(t.c.model_sha, t.c.input_sha, t.c.settings).where(t.c.task_id == task_id)).first()
    if row is None or row.model_sha is None:
        raise NotFound(f"no training task {task_id}")
    return str(row.model_sha), str(row.input_sha), json.loads(row.settings)


def receipt_commitment(engine: Engine, task_id: str, attempt: int) -> str:
    with engine.connect() as conn:
        value = conn.execute(
            select(s.receipts.c.commitment).where(s.receipts.c.task_id == task_id, s.receipts.c.attempt == attempt)
        ).scalar()
    if value is None:
        raise NotFound(f"no receipt for task {task_id}/{attempt}")
    return str(value)


@dataclass(frozen=True)
class Outcome:
    """How an audit ends; evidence (hex) is the coordinator's expected digest, set when slashable."""

    state: str
    reason: str
    evidence: str = ""
    replay_ms: int | None = None


def settle(engine: Engine, audit: Audit, outcome: Outcome, now_ms: int) -> bool:
    """End a pending audit; False when it had ended already (nothing changes then)."""
    with engine.begin() as conn:
        done = conn.execute(
            update(ta)
            .where(ta.c.task_id == audit.task_id, ta.c.attempt == audit.attempt, ta.c.state == PENDING)
            .values(state=outcome.state, reason=outcome.reason[:2000], settled_ms=now_ms, replay_ms=outcome.replay_ms)
        ).rowcount
        if not done:
            return False
        if outcome.state == UNVERIFIED:
            ledger.credit_results(conn, [(audit.node, audit.job_id, audit.task_id, audit.attempt)], now_ms)
        elif outcome.state == PASSED:
            records.bump(conn, [audit.node], valid=True, job_id=audit.job_id)
            ledger.credit_results(conn, [(audit.node, audit.job_id, audit.task_id, audit.attempt)], now_ms)
        else:
            _caught(conn, audit, outcome, now_ms)
    return True


def _caught(conn: Connection, audit: Audit, outcome: Outcome, now_ms: int) -> None:
    """A failed audit: no credit, reputation down, a "caught" event, a slash, the task reissued."""
    records.bump(conn, [audit.node], valid=False, job_id=audit.job_id)
    task = conn.execute(select(s.tasks).where(s.tasks.c.task_id == audit.task_id).with_for_update()).one()
    what = f"training result of task {task.idx} (attempt {audit.attempt}) failed its audit: {outcome.reason}"
    append_event(conn, audit.job_id, "caught", now_ms, task_index=task.idx, node=audit.node, message=what[:2000])
    log.warning("node %s caught: %s", audit.node, what)
    if outcome.evidence:
        _queue_slash(conn, audit, outcome.evidence, now_ms)
    if outcome.state == FAILED and task.state == "done" and task.attempt == audit.attempt and _round_open(conn, audit):
        _reissue(conn, task, audit, now_ms)


def _round_open(conn: Connection, audit: Audit) -> bool:
    """Whether the audited result's round is still open (a closed round takes no more results)."""
    closed = conn.execute(
        select(tr.c.round_no).where(tr.c.job_id == audit.job_id, tr.c.round_no >= audit.round_no).limit(1)
    ).first()
    return closed is None


def _queue_slash(conn: Connection, audit: Audit, evidence: str, now_ms: int) -> None:
    queue_slash(
        conn,
        node=audit.node,
        job_id=audit.job_id,
        task_id=audit.task_id,
        attempt=audit.attempt,
        correct_output_sha=evidence,
        now_ms=now_ms,
    )


def _reissue(conn: Connection, task: Any, audit: Audit, now_ms: int) -> None:
    """Give the caught result's task to another node, so the round can still reach its quorum.

    Not counted against the task's max_attempts (the task is fine, its node cheated), and the
    caught node is kept off it for a while, as for a caught inference result.
    """
    conn.execute(
        update(s.tasks)
        .where(s.tasks.c.task_id == task.task_id)
        .values(
            state="pending",
            node=None,
            deadline_ms=None,
            output_sha=None,
            output_size=None,
            last_failed_node=audit.node,
            last_failed_ms=now_ms + AVOID_CAUGHT_MS,
        )
    )
    append_event(
        conn,
        audit.job_id,
        "reissued",
        now_ms,
        job_values={"tasks_done": s.jobs.c.tasks_done - 1},
        task_index=task.idx,
        node=audit.node,
        message="the result failed its audit",
    )
