"""Verification in the accept transaction: open checks, apply verdicts, settle who was right.

A check compares a checker's output rows with the subject's; the coordinator chose the
checker (assign.py). Agreement verifies the subject (its credit is written only now), once
the referee has confirmed it when the two nodes are not both trusted (confirmation.py). A
disagreement is never settled by one checker's word: the coordinator re-executes the rows
itself and rules (rulings.py), so a lying checker cannot get an honest node punished, nor a
liar pass by luck; whoever the referee proves wrong is caught and, on a chain, slashed with
its own signed receipt. If the referee cannot run the model, a tiebreak on a third node
decides instead, and whoever disagrees with two matching outputs is caught.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update

from coordinator.db import schema as s
from coordinator.repositories.jobs import OPEN_CHECK_STATES
from coordinator.repositories.ledger import credits as ledger
from coordinator.repositories.verification import assign, canaries, ending, fees
from coordinator.repositories.verification.confirmation import confirm_rows, needs_confirmation, root_kind
from coordinator.repositories.verification.trust import bump, reset_streak
from tensorgrid.types import BlobRef

MAX_CHECKERS = 4  # a chain with this many mutually disagreeing checkers is inconclusive
OPEN_STATES = OPEN_CHECK_STATES
CHECK_KIND = s.CHECK_KIND
CANARY = "canary"  # a check's kind: its subject's whole shard, reshuffled (not a spot-check)
SPOTCHECK = "spotcheck"  # a check's kind: m sampled rows of its subject's shard
checks, referee_rulings, reputation = s.checks, s.referee_rulings, s.reputation
EventFn = Callable[..., Any]


@dataclass(frozen=True)
class CheckPlan:
    """Open a check of the result being accepted: re-execute `rows` of it on another node."""

    check_task_id: str
    input: BlobRef  # the gathered rows
    rows: tuple[int, ...]
    canary: CheckPlan | None = None  # the canary to open if this check verifies (canaries.py)
    # its ruling is certain (an untrusted subject): the referee may re-run it ahead (services/verification/ahead.py)
    ahead: bool = False
    # the referee re-runs its rows itself and no node does (open_check): an untrusted subject's
    # check, whose checker's word would need the referee's confirmation of the same rows anyway
    direct: bool = False


@dataclass(frozen=True)
class Verdict:
    """A check task's output compared with the subject's and with earlier checkers' outputs."""

    agrees_subject: bool
    agrees_checkers: tuple[str, ...]  # earlier checkers (addresses) whose output this one matches
    # the output of a canary leased early, sent before its subject's result was verified: kept,
    # and compared once the canary is armed (canaries.py)
    parked: bool = False


PARKED = Verdict(False, (), parked=True)


def open_check(
    conn: Connection,
    subject: Any,
    plan: CheckPlan,
    now_ms: int,
    *,
    kind: str = SPOTCHECK,
    root: str = "",
    ahead: bool = False,
) -> None:
    """Insert the check task (a copy of the subject task's settings) and its check row.

    A direct plan (an untrusted subject's spot-check) goes to the referee, not to a node: its
    task is never leased and its ruling is asked for at once, on all its rows (rows_limit = its
    row count, which marks a check the referee runs alone: rulings.fail hands it to a node if
    the referee cannot run it). Every ruling on an untrusted subject re-ran these same rows
    anyway (the confirmation of a checker's agreement, or the ruling on its disagreement), so
    a checker's run added no detection, only its cost on a node.

    ahead: a canary leased early (canaries.py), before its subject's result (subject.output_sha
    is ""): its task is leased and its checker drawn now, its check row waits in AHEAD.
    """
    direct = plan.direct  # only Verification.examine makes one: tiebreaks and canaries never are
    exclude = {subject.node}
    if root:
        exclude |= {r.checker for r in conn.execute(select(checks.c.checker).where(checks.c.root_id == root))}
    _insert_check_task(conn, subject, plan, "cancelled" if direct else "pending")
    conn.execute(
        insert(checks).values(
            check_id=plan.check_task_id,
            root_id=root or plan.check_task_id,
            job_id=subject.job_id,
            kind=kind,
            subject_task=subject.task_id,
            subject_attempt=subject.attempt,
            subject_node=subject.node,
            subject_output=subject.output_sha,
            rows=json.dumps(list(plan.rows)),
            state=canaries.AHEAD if ahead else "disputed" if direct else "open",
            outcome="",
            created_ms=now_ms,
        )
    )
    if plan.canary is not None:
        c = plan.canary
        canaries.save(conn, plan.check_task_id, c.check_task_id, c.input.sha256, c.input.size, list(c.rows))
    assign.bar(conn, plan.check_task_id, sorted(exclude))
    if direct:
        request_ruling(conn, get_check(conn, plan.check_task_id), now_ms, len(plan.rows))
    else:
        assign.assign_checker(conn, plan.check_task_id, now_ms)


def _insert_check_task(conn: Connection, subject: Any, plan: CheckPlan, state: str) -> None:
    """The check's task: a copy of the subject task's settings over the check's rows."""
    t = s.tasks
    conn.execute(
        insert(t).values(
            task_id=plan.check_task_id,
            job_id=subject.job_id,
            idx=subject.idx,
            state=state,
            # queued in its job's turn, where the subject was: not leased before other work
            job_created_ms=_created_ms(conn, subject.job_id),
            kind=CHECK_KIND,
            device=subject.device,
            min_memory_bytes=subject.min_memory_bytes,
            model_sha=subject.model_sha,
            model_size=subject.model_size,
            input_sha=plan.input.sha256,
            input_size=plan.input.size,
            rows=len(plan.rows),
            settings=subject.settings,
            memory_limit_bytes=subject.memory_limit_bytes,
            time_limit_ms=subject.time_limit_ms,
            max_attempts=subject.max_attempts + MAX_CHECKERS,
            attempt=0,
            failures=0,
        )
    )


def get_check(conn: Connection, check_id: str) -> Any:
    return conn.execute(select(checks).where(checks.c.check_id == check_id)).first()


def chain_outputs(conn: Connection, root_id: str) -> list[tuple[str, str]]:
    """(checker, output sha) of the chain's checks that have a result."""
    rows = conn.execute(
        select(checks.c.checker, checks.c.checker_output).where(
            checks.c.root_id == root_id, checks.c.checker_output.is_not(None)
        )
    )
    return [(r.checker, r.checker_output) for r in rows]


def apply_verdict(
    conn: Connection, check_id: str, checker: str, output: BlobRef, verdict: Verdict, now_ms: int, event: EventFn
) -> None:
    """Record a check task's result and settle its chain if it can be settled."""
    chk = get_check(conn, check_id)
    if chk is None or chk.state not in ("open", canaries.AHEAD):
        return
    if chk.state == canaries.AHEAD or verdict.parked:  # compared once armed (Verification.canaries)
        conn.execute(
            update(checks).where(checks.c.check_id == check_id).values(checker=checker, checker_output=output.sha256)
        )
        return
    # a parked canary's own output is no earlier checker's: a canary is its chain's first check
    earlier = [] if chk.checker_output else chain_outputs(conn, chk.root_id)
    conn.execute(
        update(checks)
        .where(checks.c.check_id == check_id)
        .values(checker=checker, checker_output=output.sha256, state="disputed")
    )
    if verdict.agrees_subject and not earlier and needs_confirmation(conn, chk, checker):
        if ruling_failed(conn, chk.root_id):
            # a check the referee was to run alone and could not (hand_to_nodes): it cannot
            # confirm this agreement either, which then verifies nothing (as rulings.fail)
            settle(conn, chk, "unverified", now_ms, event)
            fees.pay_checkers(conn, chk.root_id, [checker], now_ms)
            return
        # two nodes agreeing is proof only if both are trusted: the referee re-runs the check's
        # rows (as many as the job's detection target asked of the check itself)
        request_ruling(conn, chk, now_ms, confirm_rows(conn, chk))
    elif verdict.agrees_subject:
        settle(conn, chk, "verified", now_ms, event)
        bump(conn, [checker], valid=True, job_id=chk.job_id)
        fees.pay_checkers(conn, chk.root_id, [checker], now_ms)
        # Earlier checkers of a tiebreak chain (the referee could not run) disagreed with two
        # matching outputs: without the referee's own re-execution nobody is blamed; they are
        # only checked as newcomers again.
        reset_streak(conn, [node for node, _ in earlier])
    elif verdict.agrees_checkers:
        # A quorum against the subject, but no re-execution by the referee: its result is
        # redone elsewhere and it is checked as a newcomer again, never caught nor slashed.
        settle(conn, chk, "inconclusive", now_ms, event, "output rows disagree with two other nodes")
    elif not earlier and not ruling_failed(conn, chk.root_id):
        request_ruling(conn, chk, now_ms, 0)
        event(conn, chk.job_id, "disputed", now_ms, node=chk.subject_node, message=f"checker {checker} disagrees")
    else:
        open_tiebreak(conn, chk, now_ms, event, f"checker {checker} disagrees")


def open_tiebreak(conn: Connection, chk: Any, now_ms: int, event: EventFn, why: str) -> None:
    """Another node re-runs the chain's rows, or, with MAX_CHECKERS spent, the chain is inconclusive."""
    if len(chain_outputs(conn, chk.root_id)) >= MAX_CHECKERS:
        settle(conn, chk, "inconclusive", now_ms, event)
        return
    tiebreak = CheckPlan(secrets.token_hex(32), BlobRef(_input_of(conn, chk.root_id), 0), tuple(json.loads(chk.rows)))
    subject = _subject_row(conn, chk)
    open_check(conn, subject, _with_size(conn, chk.root_id, tiebreak), now_ms, kind="tiebreak", root=chk.root_id)
    event(conn, chk.job_id, "disputed", now_ms, node=chk.subject_node, message=why)


def request_ruling(conn: Connection, chk: Any, now_ms: int, rows_limit: int) -> None:
    """Ask the coordinator to re-execute the chain's rows (the first rows_limit of them; 0: all)."""
    conn.execute(
        insert(referee_rulings).values(
            check_id=chk.root_id,
            job_id=chk.job_id,
            state="pending",
            rows_limit=rows_limit,
            error="",
            created_ms=now_ms,
        )
    )


def _created_ms(conn: Connection, job_id: str) -> int:
    return int(conn.execute(select(s.jobs.c.created_ms).where(s.jobs.c.job_id == job_id)).scalar_one())


def ruling_failed(conn: Connection, root_id: str) -> bool:
    state = conn.execute(select(referee_rulings.c.state).where(referee_rulings.c.check_id == root_id)).scalar()
    return state == "failed"


def _input_of(conn: Connection, task_id: str) -> str:
    return str(conn.execute(select(s.tasks.c.input_sha).where(s.tasks.c.task_id == task_id)).scalar_one())


def _with_size(conn: Connection, task_id: str, plan: CheckPlan) -> CheckPlan:
    size = conn.execute(select(s.tasks.c.input_size).where(s.tasks.c.task_id == task_id)).scalar_one()
    return CheckPlan(plan.check_task_id, BlobRef(plan.input.sha256, int(size)), plan.rows)


def _subject_row(conn: Connection, chk: Any) -> Any:
    """The subject task as it was when checked (attempt and node from the check row)."""
    row = conn.execute(select(s.tasks).where(s.tasks.c.task_id == chk.subject_task)).one()
    values = {
        **row._mapping,
        "attempt": chk.subject_attempt,
        "node": chk.subject_node,
        "output_sha": chk.subject_output,
    }
    return _Row(values)


class _Row:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def settle(
    conn: Connection,
    chk: Any,
    outcome: str,
    now_ms: int,
    event: EventFn,
    why: str = "output rows disagree with two other nodes",
) -> None:
    """Close the chain with its outcome and carry out the consequences for the subject."""
    conn.execute(update(checks).where(checks.c.root_id == chk.root_id).values(state="done", outcome=outcome))
    conn.execute(
        update(s.tasks)
        .where(s.tasks.c.task_id.in_(select(checks.c.check_id).where(checks.c.root_id == chk.root_id)))
        .where(s.tasks.c.state.in_(s.OPEN_TASK_STATES))
        .values(state="cancelled", node=None, deadline_ms=None)
    )
    if outcome != "verified":
        canaries.drop(conn, chk.root_id)
    subject = (chk.subject_node, chk.job_id, chk.subject_task, chk.subject_attempt)
    canary = root_kind(conn, chk.root_id) == "canary"  # its subject was verified and paid already
    if outcome in ("verified", "unverified", "unverifiable"):  # unverifiable: nobody blamed, paid
        if not canary:
            ledger.credit_results(conn, [subject], now_ms)
        if outcome == "verified":
            bump(conn, [chk.subject_node], valid=True, job_id=chk.job_id)
            if not canary:
                _maybe_canary(conn, chk, now_ms)
        event(conn, chk.job_id, outcome, now_ms, task_index=_idx(conn, chk), node=chk.subject_node)
        return
    if outcome == "inconclusive":  # not proven wrong, but not to be trusted either
        reset_streak(conn, [chk.subject_node])
    if outcome == "caught":
        bump(conn, [chk.subject_node], valid=False, job_id=chk.job_id)
        event(
            conn,
            chk.job_id,
            "caught",
            now_ms,
            task_index=_idx(conn, chk),
            node=chk.subject_node,
            message=why,
        )
    if canary and outcome != "caught":
        return
    # A canary that proves its (already verified and paid) subject wrong still takes the wrong
    # rows out of the job: the job waits for its canaries, so the task can be redone. Not
    # without limit: a task disputed too often fails its job with the reason (ending.py's bounds).
    rounds = ending.disputes_end_the_task(conn, chk.subject_task)
    if rounds is not None:
        ending.fail_job(
            conn, chk.job_id, f"task {_idx(conn, chk)}: {rounds} results were disputed and taken back ({why})", now_ms
        )
        return
    _reissue(conn, chk, now_ms)


def _maybe_canary(conn: Connection, chk: Any, now_ms: int) -> None:
    """Open the canary prepared with this check, if one was (a draw at canary_rate)."""
    prepared = canaries.take(conn, chk.root_id)
    if prepared is None:
        return
    canary_id, sha, size, rows = prepared
    if canaries.arm(conn, canary_id, chk.subject_output, now_ms):
        return  # leased early (the same canary): it opens now, its task maybe done already
    open_check(conn, _subject_row(conn, chk), CheckPlan(canary_id, BlobRef(sha, size), rows), now_ms, kind=CANARY)


def lease_canary_early(conn: Connection, task_id: str, attempt: int, node: str, plan: CheckPlan, now_ms: int) -> bool:
    """The canary of `node`'s lease `attempt` of the shard, leased now to a drawn node other
    than `node` (canaries.py); False (nothing written) when the lease has ended (a result in:
    the canary follows the check as before), the canary exists already, or the lease is a
    check's: checks do not recurse (a canary of a canary stayed ahead, its node's answer refused)."""
    row = conn.execute(select(s.tasks).where(s.tasks.c.task_id == task_id)).first()
    if row is None or row.state != "leased" or row.attempt != attempt or row.node != node:
        return False
    if get_check(conn, task_id) is not None:
        return False
    if get_check(conn, plan.check_task_id) is not None:
        return False
    subject = _Row({**row._mapping, "output_sha": ""})
    open_check(conn, subject, plan, now_ms, kind=CANARY, ahead=True)
    return True


def _idx(conn: Connection, chk: Any) -> int:
    return int(conn.execute(select(s.tasks.c.idx).where(s.tasks.c.task_id == chk.subject_task)).scalar_one())


def _reissue(conn: Connection, chk: Any, now_ms: int) -> None:
    """Take the subject's result back: the task is pending again, away from the subject node."""
    t = s.tasks
    res = conn.execute(
        update(t)
        .where(t.c.task_id == chk.subject_task, t.c.state == "done", t.c.attempt == chk.subject_attempt)
        .values(
            state="pending",
            node=None,
            output_sha=None,
            output_size=None,
            deadline_ms=None,
            last_failed_node=chk.subject_node,
            last_failed_ms=now_ms + 10 * 60_000,
        )
    )
    if res.rowcount:
        conn.execute(update(s.jobs).where(s.jobs.c.job_id == chk.job_id).values(tasks_done=s.jobs.c.tasks_done - 1))
