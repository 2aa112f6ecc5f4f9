"""Accepting verified results, many per transaction (group commit).

Under load, results from many nodes arrive together; recording them in one transaction
with multi-row inserts costs a fraction of one transaction each, and every result is
still durable before its node is told it was accepted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, bindparam, select, update

from coordinator.errors import Rejected
from coordinator.ledger import credits as ledger  # module import: the ledger imports storage too
from coordinator.storage import schema as s
from coordinator.storage.rawsql import Raw, RawInsert
from coordinator.storage.tasks import _check_holder, _check_matches
from coordinator.verification import records as verification
from coordinator.verification.records import CheckPlan, Verdict
from coordinator.verification.store import job_complete
from tensorgrid.types import BlobRef, JobState, Receipt

if TYPE_CHECKING:
    from coordinator.training.audit_store import AuditPlan

_t = s.tasks
# Built once: a prebuilt statement keeps SQLAlchemy's cache key memoized (no per-call tree walk).
_ACCEPT_WHERE = (
    (_t.c.task_id == bindparam("b_task"))
    & (_t.c.node == bindparam("b_node"))
    & (_t.c.attempt == bindparam("b_attempt"))
    & (_t.c.state == "leased")
    & (_t.c.deadline_ms >= bindparam("b_now"))
    & (_t.c.job_id == bindparam("b_job"))
    & (_t.c.input_sha == bindparam("b_input"))
)
_ACCEPT_VALUES: dict[str, Any] = dict(
    state="done", output_sha=bindparam("b_out"), output_size=bindparam("b_size"), deadline_ms=None
)
_ACCEPT_ANY_ROWS = update(_t).where(_ACCEPT_WHERE).values(**_ACCEPT_VALUES).returning(_t.c.job_id, _t.c.idx)
_ACCEPT_ROWS = (
    update(_t)
    .where(_ACCEPT_WHERE & (_t.c.rows == bindparam("b_rows")))
    .values(**_ACCEPT_VALUES)
    .returning(_t.c.job_id, _t.c.idx)
)
_NODE_DONE = (
    update(s.nodes)
    .where(s.nodes.c.address == bindparam("b_node"))
    .values(
        completed=s.nodes.c.completed + bindparam("b_n"),
        consecutive_failures=0,
        backoff_until_ms=0,
        last_seen_ms=bindparam("b_now"),
    )
)
_JOB_DONE = (
    update(s.jobs)
    .where(s.jobs.c.job_id == bindparam("b_job"))
    .values(
        tasks_done=s.jobs.c.tasks_done + bindparam("b_n"),
        event_seq=s.jobs.c.event_seq + bindparam("b_n"),
        updated_ms=bindparam("b_now"),
    )
    .returning(s.jobs.c.event_seq, s.jobs.c.tasks_done, s.jobs.c.tasks_total, s.jobs.c.state)
)
_ACCEPT_ANY_ROWS_RAW, _ACCEPT_ROWS_RAW = Raw(_ACCEPT_ANY_ROWS), Raw(_ACCEPT_ROWS)
_NODE_DONE_RAW, _JOB_DONE_RAW = Raw(_NODE_DONE), Raw(_JOB_DONE)
_RECEIPTS_RAW = RawInsert(s.receipts, [c.name for c in s.receipts.c])
_EVENTS_RAW = RawInsert(s.events, [c.name for c in s.events.c if c.name != "id"])


@dataclass(frozen=True)
class ResultItem:
    """A result whose signature and bytes the api has verified; rows for inference outputs."""

    node: str
    receipt: Receipt
    output: BlobRef
    rows: int | None
    check: CheckPlan | None = None  # open this spot-check of the result (it is paid once verified)
    verdict: Verdict | None = None  # the result is a check task's: settle the check with this
    audit: AuditPlan | None = None  # a training result drawn for an audit: paid once it passes


def _paid_now(item: ResultItem) -> bool:
    return item.check is None and item.verdict is None and item.audit is None


Outcome = tuple[str, bool] | Rejected  # (job id, job complete) or why it was refused


class ResultStore:
    engine: Engine

    def _event(self, conn: Connection, job_id: str, kind: str, now_ms: int, **fields: Any) -> None: ...

    def accept_results(self, items: list[ResultItem], now_ms: int) -> list[Outcome]:
        """Record many results in one transaction; each is checked against its task on its own.

        An accepted result's outcome is (job id, whether its job is complete once this batch commits).
        """
        outcomes: list[Outcome] = []
        accepted: list[tuple[ResultItem, str, int]] = []
        with self.engine.begin() as conn:
            for item in items:
                try:
                    job_id, idx = self._claim(conn, item, now_ms)
                except Rejected as e:
                    outcomes.append(e)
                    continue
                accepted.append((item, job_id, idx))
                outcomes.append((job_id, False))
            if accepted:
                complete = self._record(conn, accepted, now_ms)
                outcomes = [(o[0], o[0] in complete) if isinstance(o, tuple) else o for o in outcomes]
        return outcomes

    def accept_result(
        self, node: str, receipt: Receipt, output: BlobRef, rows: int | None, now_ms: int
    ) -> tuple[str, bool]:
        """One result; raises Rejected."""
        (outcome,) = self.accept_results([ResultItem(node, receipt, output, rows)], now_ms)
        if isinstance(outcome, Rejected):
            raise outcome
        return outcome

    def _claim(self, conn: Connection, item: ResultItem, now_ms: int) -> tuple[str, int]:
        """Mark the task done if the item is its lease holder's result for it; else say why not."""
        r = item.receipt
        params = dict(
            b_task=r.task_id,
            b_node=item.node,
            b_attempt=r.attempt,
            b_now=now_ms,
            b_job=r.job_id,
            b_input=r.input_hash,
            b_out=item.output.sha256,
            b_size=item.output.size,
        )
        stmt = _ACCEPT_ANY_ROWS_RAW
        if item.rows is not None:
            stmt, params["b_rows"] = _ACCEPT_ROWS_RAW, item.rows
        row = stmt.first(conn, params)
        if row is None:
            current = conn.execute(select(_t).where(_t.c.task_id == r.task_id)).first()
            _check_holder(current, item.node, r.attempt, now_ms)
            _check_matches(current, r, item.rows)
            raise Rejected("the result does not match its task")
        return str(row.job_id), int(row.idx)

    def _record(self, conn: Connection, accepted: list[tuple[ResultItem, str, int]], now_ms: int) -> set[str]:
        """Receipts, node counters, job progress and events for the accepted results."""
        _RECEIPTS_RAW.many(
            conn,
            [
                dict(
                    task_id=i.receipt.task_id,
                    attempt=i.receipt.attempt,
                    node=i.node,
                    input_hash=i.receipt.input_hash,
                    output_hash=i.receipt.output_hash,
                    commitment=i.receipt.commitment,
                    signature=i.receipt.signature,
                    received_ms=now_ms,
                )
                for i, _, _ in accepted
            ],
        )
        # Pay for unchecked work in the transaction that accepts it (priced jobs only); a
        # checked result is paid when its check passes, a check task is the grid's own cost.
        paid = [(i.node, job, i.receipt.task_id, i.receipt.attempt) for i, job, _ in accepted if _paid_now(i)]
        ledger.credit_results(conn, paid, now_ms)
        per_node = Counter(i.node for i, _, _ in accepted)
        _NODE_DONE_RAW.many(conn, [dict(b_node=node, b_n=n, b_now=now_ms) for node, n in per_node.items()])
        per_job: dict[str, list[tuple[ResultItem, int]]] = defaultdict(list)
        touched: set[str] = set()
        for item, job_id, _ in accepted:
            touched.add(job_id)
            if item.audit is not None:
                from coordinator.training.audit_store import open_audit  # lazily: training imports storage

                r = item.receipt
                open_audit(conn, item.node, r.task_id, r.attempt, item.output, item.audit, now_ms)
            if item.check is not None:
                subject = conn.execute(select(_t).where(_t.c.task_id == item.receipt.task_id)).one()
                verification.open_check(conn, subject, item.check, now_ms)
            elif item.verdict is not None:
                verification.apply_verdict(
                    conn, item.receipt.task_id, item.node, item.output, item.verdict, now_ms, self._event
                )
        for item, job_id, idx in accepted:
            if item.verdict is None:
                per_job[job_id].append((item, idx))
        events: list[dict[str, Any]] = []
        unfinished: set[str] = set()  # jobs the update below shows have tasks left: no completeness query
        for job_id, done in per_job.items():
            job = _JOB_DONE_RAW.first(conn, dict(b_job=job_id, b_n=len(done), b_now=now_ms))
            if job.tasks_done < job.tasks_total:
                unfinished.add(job_id)
            first_seq, first_done = job.event_seq - len(done), job.tasks_done - len(done)
            for k, (item, idx) in enumerate(done, start=1):
                events.append(
                    dict(
                        job_id=job_id,
                        seq=first_seq + k,
                        kind="completed",
                        time_ms=now_ms,
                        task_index=idx,
                        node=item.node,
                        message="",
                        tasks_done=first_done + k,
                        tasks_total=job.tasks_total,
                        state=JobState(job.state).value,
                    )
                )
        if events:
            _EVENTS_RAW.many(conn, events)
        # A job is complete once every task is done and every check of its results is settled.
        return {job_id for job_id in touched - unfinished if job_complete(conn, job_id)}
