"""The coordinator's rulings on disputed checks: what a ruling needs, and carrying it out.

When a checker's rows disagree with the subject's, the coordinator re-executes the same
rows itself (the runtime part is services/verification/manager.py) and rules: whoever's rows differ from the
referee's is caught. A ruling is conclusive evidence: the loser's own signed receipt names
an output the referee proved wrong, so on a chain its stake is slashed. If the referee
cannot run the model (say a CUDA-only program on a CPU coordinator), the ruling fails and
the chain falls back to a tiebreak on a third node.

The referee rules against a node only when its re-execution is sound: it ran the subject's
whole shard twice with the job's batch size (same rows, same batches as the node) and got
the same rows both times, and those rows equal the sampled rows run on their own (the rows
are independent of their batch). Otherwise the program is not verifiable: the chain ends
without blame, the subject is paid, and the job fails saying so.

The referee also confirms agreement between two nodes not both trusted, on the check's own
rows (as many as the job's detection target asked for), so a pair of new nodes (or one
operator's many keys) returning the same wrong answer is caught, and both are slashed (a
generation check's rows are first scored, not decoded: services/verification/manager.py). A
confirmation the referee cannot run verifies nothing: the result is paid, unverified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from coordinator.db import schema as s
from coordinator.repositories.ledger.slashing import queue_slash
from coordinator.repositories.verification import checks as records
from coordinator.repositories.verification import confirmation, ending, fees, unplaced

EventFn = records.EventFn
referee_rulings = s.referee_rulings


@dataclass(frozen=True)
class RulingInfo:
    """Everything re-executing a disputed chain's rows and comparing them needs."""

    check_id: str  # the chain's root
    job_id: str
    model_sha: str
    input_sha: str  # the check task's input: the subject's sampled rows
    settings: dict[str, Any]
    subject_output: str
    rows: list[int]  # the rows of the subject's output that the check input holds
    checkers: list[tuple[str, str]]  # (checker, output sha) in the chain
    rows_limit: int = 0  # re-run only the first n rows of the check input (0: all)
    shard_sha: str = ""  # the subject task's whole input (its batch composition)
    cuda: tuple[str, ...] = ()  # nodes of the chain (subject, checkers) that ran on CUDA
    subject_node: str = ""


@dataclass(frozen=True)
class Ruling:
    """The referee's output compared with the subject's rows and each checker's."""

    output_sha: str
    subject_right: bool
    right_checkers: tuple[str, ...]
    reason: str = ""  # set: the program is not verifiable (why); nobody is blamed


def pending(conn: Connection, limit: int = 20) -> list[RulingInfo]:
    r, c, t = referee_rulings, records.checks, s.tasks
    rows = conn.execute(
        select(
            r.c.check_id,
            r.c.job_id,
            r.c.rows_limit,
            c.c.subject_output,
            c.c.rows,
            t.c.model_sha,
            t.c.input_sha,
            t.c.settings,
            c.c.subject_task,
            c.c.subject_node,
        )
        .join(c, c.c.check_id == r.c.check_id)
        .join(t, t.c.task_id == r.c.check_id)
        .where(r.c.state == "pending")
        .order_by(r.c.created_ms)
        .limit(limit)
    ).all()
    return [
        RulingInfo(
            check_id=x.check_id,
            job_id=x.job_id,
            model_sha=x.model_sha,
            input_sha=x.input_sha,
            settings=json.loads(x.settings),
            subject_output=x.subject_output,
            rows=json.loads(x.rows),
            checkers=records.chain_outputs(conn, x.check_id),
            rows_limit=int(x.rows_limit or 0),
            shard_sha=_input_sha(conn, x.subject_task),
            subject_node=x.subject_node,
            cuda=_cuda_nodes(conn, [x.subject_node, *(n for n, _ in records.chain_outputs(conn, x.check_id))]),
        )
        for x in rows
    ]


@dataclass(frozen=True)
class Ahead:
    """A re-run the referee can make before its ruling is asked for: the first `rows` rows of an
    open check's input through the job's model, as a confirmation of that check would run them."""

    check_id: str
    model_sha: str
    input_sha: str
    settings: dict[str, Any]
    rows: int


def ahead(conn: Connection, check_id: str) -> Ahead | None:
    """What confirming this check will re-run, while it is still open (waiting for its checker);
    None once it is answered or settled, and for a canary (whose agreement needs no confirmation)."""
    chk = records.get_check(conn, check_id)
    if chk is None or chk.state != "open" or chk.kind == records.CANARY:
        return None
    t = s.tasks.c
    task = conn.execute(select(t.model_sha, t.input_sha, t.settings).where(t.task_id == check_id)).first()
    if task is None:
        return None
    rows = confirmation.confirm_rows(conn, chk)
    # as pending() reads them, so a run ahead's key is the ruling's (services/verification/ahead.py)
    return Ahead(check_id, task.model_sha, task.input_sha, json.loads(task.settings), rows)


@dataclass(frozen=True)
class LeasedShard:
    """A job's task (not a check) leased and not yet answered: what re-running rows of its input
    as the referee would rule on them needs (services/verification/manager.py: foresee)."""

    model_sha: str
    input_sha: str
    rows: int
    settings: dict[str, Any]


def leased_shard(conn: Connection, task_id: str, attempt: int, node: str) -> LeasedShard | None:
    """The task as LeasedShard while `node` still holds its lease `attempt` (no result in, not
    given back, not expired and reissued); else None. Its settings are read as pending() reads
    a check task's (a copy of its subject's), so a re-run's key is its ruling's."""
    t = s.tasks.c
    row = conn.execute(
        select(t.model_sha, t.input_sha, t.rows, t.settings, t.state, t.attempt, t.node, t.kind).where(
            t.task_id == task_id
        )
    ).first()
    if row is None or row.state != "leased" or row.attempt != attempt or row.node != node:
        return None
    if row.kind == s.CHECK_KIND or not row.model_sha:
        return None
    return LeasedShard(row.model_sha, row.input_sha, int(row.rows), json.loads(row.settings))


def _input_sha(conn: Connection, task_id: str) -> str:
    return str(conn.execute(select(s.tasks.c.input_sha).where(s.tasks.c.task_id == task_id)).scalar() or "")


def _cuda_nodes(conn: Connection, nodes: list[str]) -> tuple[str, ...]:
    n = s.nodes.c
    rows = conn.execute(select(n.address, n.device_kind).where(n.address.in_(nodes))).all()
    return tuple(sorted(r.address for r in rows if str(r.device_kind).startswith("cuda")))


def apply(conn: Connection, check_id: str, ruling: Ruling, now_ms: int, event: EventFn) -> str | None:
    """Carry out a ruling; returns the job id if the chain was still open (else None)."""
    done = conn.execute(
        update(referee_rulings)
        .where(referee_rulings.c.check_id == check_id, referee_rulings.c.state == "pending")
        .values(state="ruled", output_sha=ruling.output_sha)
    )
    chk = records.get_check(conn, check_id)
    if not done.rowcount or chk is None or chk.state == "done":
        return None
    checkers = records.chain_outputs(conn, check_id)
    if ruling.reason:  # nobody blamed: the checkers' work on it is paid like the subject's
        records.settle(conn, chk, "unverifiable", now_ms, event)
        fees.pay_checkers(conn, check_id, [node for node, _ in checkers], now_ms)
        ending.fail_job(conn, chk.job_id, f"the program is not verifiable: {ruling.reason}", now_ms)
        return str(chk.job_id)
    wrong = [node for node, _ in checkers if node not in ruling.right_checkers]
    if ruling.subject_right:
        records.settle(conn, chk, "verified", now_ms, event)
    else:
        records.settle(conn, chk, "caught", now_ms, event, "output rows differ from the coordinator's re-execution")
        _slash(conn, chk.subject_node, chk.job_id, chk.subject_task, chk.subject_attempt, ruling.output_sha, now_ms)
    records.bump(conn, ruling.right_checkers, valid=True, job_id=chk.job_id)
    fees.pay_checkers(conn, check_id, ruling.right_checkers, now_ms)
    records.bump(conn, wrong, valid=False, job_id=chk.job_id)
    for node in wrong:
        event(
            conn,
            chk.job_id,
            "caught",
            now_ms,
            node=node,
            message="check result differs from the coordinator's re-execution",
        )
        task_id, attempt, _ = fees.check_receipt(conn, check_id, node)
        if task_id:
            _slash(conn, node, chk.job_id, task_id, attempt, ruling.output_sha, now_ms)
    return str(chk.job_id)


def fail(conn: Connection, check_id: str, error: str, now_ms: int, event: EventFn) -> str | None:
    """The referee could not run: a third node breaks the tie (a confirmation verifies nothing)."""
    limit = conn.execute(select(referee_rulings.c.rows_limit).where(referee_rulings.c.check_id == check_id)).scalar()
    done = conn.execute(
        update(referee_rulings)
        .where(referee_rulings.c.check_id == check_id, referee_rulings.c.state == "pending")
        .values(state="failed", error=error[:2000])
    )
    chk = records.get_check(conn, check_id)
    if not done.rowcount or chk is None or chk.state == "done":
        return None
    checkers = [node for node, _ in records.chain_outputs(conn, check_id)]
    if limit and not checkers:  # a check the referee was to run alone: a node runs it instead
        unplaced.hand_to_nodes(conn, chk, now_ms)
    elif limit:  # an agreement the referee could not confirm: paid (checker too), but no trust for anyone
        records.settle(conn, chk, "unverified", now_ms, event)
        fees.pay_checkers(conn, check_id, checkers, now_ms)
    elif not checkers:  # nobody else could check it and neither can we: the old last resort
        records.settle(conn, chk, "unverified", now_ms, event)
    else:
        records.open_tiebreak(conn, chk, now_ms, event, f"the coordinator could not re-execute: {error[:200]}")
    return str(chk.job_id)


def _slash(conn: Connection, node: str, job_id: str, task_id: str, attempt: int, correct: str, now_ms: int) -> None:
    """Queue the on-chain slash of a node proven wrong by the referee (a no-op without a chain)."""
    queue_slash(
        conn, node=node, job_id=job_id, task_id=task_id, attempt=attempt, correct_output_sha=correct, now_ms=now_ms
    )
