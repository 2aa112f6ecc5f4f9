"""Who checks whom, the coordinator's rulings on disputes, and leasing rules around them.

On SQLite and PostgreSQL, through the repositories and the accepting transaction the coordinator
uses (no gRPC, no torch: the referee's comparison is given as a Ruling;
tests/integration/test_verification.py runs it for real).
"""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select, update

from coordinator.config import LeaseTiming
from coordinator.db.schema import check_exclusions, checks, reputation, trust_earnings
from coordinator.kinds.inference.effects import OpenCheck, SettleCheck
from coordinator.repositories.jobs import NewTask
from coordinator.repositories.ledger.credits import set_job_price
from coordinator.repositories.store import Store
from coordinator.repositories.verification import assign
from coordinator.repositories.verification import checks as records
from coordinator.repositories.verification.checks import CheckPlan, Verdict
from coordinator.repositories.verification.rulings import Ruling
from coordinator.services.acceptance import ResultAcceptance, ResultItem
from coordinator.services.verification.ahead import run_key
from tensorgrid.spec import VerificationSpec, task_id_for
from tensorgrid.spec.verification import detection_rows
from tensorgrid.types import BlobRef, Capabilities, JobState, Receipt
from tests.jobs import new_job

CPU = Capabilities(device_kind="cpu", memory_bytes=8 << 30, cpu_cores=2)
TIMING = LeaseTiming(ttl_ms=60_000, grace_ms=500)
SUBJECT, B, C = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20
JOB, JOB2 = "ab" * 32, "cd" * 32
INPUT, OUT, WRONG, REF_OUT = "ee" * 32, "ff" * 32, "99" * 32, "77" * 32
NOW = 1_000


@pytest.fixture
def state(db_url: str):  # type: ignore[no-untyped-def]
    s = Store(db_url)
    for i, addr in enumerate((SUBJECT, B, C)):
        s.nodes.register_node(addr, CPU, f"{i:064x}", NOW, 10**9, f"nonce-{addr}")
    yield s
    s.close()


def make_job(
    state: Store, job_id: str = JOB, n: int = 1, max_attempts: int = 3, created: int = 1, rows: int = 1
) -> None:
    job = new_job(job_id, max_attempts=max_attempts, verification_json='{"mode": "spotcheck", "trust_after": 10}')
    state.jobs.create_job(
        job, [NewTask(i, task_id_for(job_id, i), BlobRef(INPUT, 0), rows) for i in range(n)], now_ms=created
    )


def receipt(task_id: str, attempt: int, output: str = OUT, job_id: str = JOB) -> Receipt:
    return Receipt(job_id, task_id, attempt, INPUT, output, signature=b"s")


def checked_result(state: Store, rows: int = 1, sampled: tuple[int, ...] = (0,)) -> str:
    """The subject's result (of a task of `rows` rows), accepted with a spot-check of its
    `sampled` rows opened; returns the check task's id."""
    make_job(state, rows=rows)
    (lease,), _ = state.tasks.lease_tasks(SUBJECT, 1, NOW, TIMING)
    plan = CheckPlan("c1" * 32, BlobRef(INPUT, 0), sampled)
    (outcome,) = ResultAcceptance(state.engine).accept_results(
        [ResultItem(SUBJECT, receipt(lease.task_id, 1), BlobRef(OUT, 3), rows, OpenCheck(plan))], NOW
    )
    assert outcome == (JOB, False)
    return plan.check_task_id


def assignee(state: Store, check_id: str) -> str | None:
    with state.engine.connect() as conn:
        return conn.execute(
            select(assign.check_assignments.c.node).where(assign.check_assignments.c.task_id == check_id)
        ).scalar()


def submit_check(state: Store, node: str, check_id: str, agrees: bool, rows: int = 1) -> None:
    (lease,), _ = state.tasks.lease_tasks(node, 1, NOW + 1, TIMING)
    assert lease.task_id == check_id and lease.kind == "inference"  # a check looks like any inference task
    verdict = Verdict(agrees_subject=agrees, agrees_checkers=())
    output = OUT if agrees else WRONG
    item = ResultItem(node, receipt(check_id, lease.attempt, output), BlobRef(output, 3), rows, SettleCheck(verdict))
    (outcome,) = ResultAcceptance(state.engine).accept_results([item], NOW + 2)
    assert isinstance(outcome, tuple)


def test_only_the_drawn_checker_may_lease_a_check(state: Store) -> None:
    check_id = checked_result(state)
    chosen = assignee(state, check_id)
    assert chosen in (B, C)  # never the subject
    other = C if chosen == B else B
    assert state.tasks.lease_tasks(other, 5, NOW + 1, TIMING)[0] == []
    assert state.tasks.lease_tasks(SUBJECT, 5, NOW + 1, TIMING)[0] == []
    assert [x.task_id for x in state.tasks.lease_tasks(chosen, 5, NOW + 1, TIMING)[0]] == [check_id]


def test_a_silent_assignee_is_barred_and_another_drawn(state: Store) -> None:
    check_id = checked_result(state)
    first = assignee(state, check_id)
    assert state.verification.reassign_checks(NOW + 1) == 0  # still its turn
    assert state.verification.reassign_checks(NOW + assign.ASSIGN_MS + 1) == 1
    second = assignee(state, check_id)
    assert second not in (first, SUBJECT, None)
    with state.engine.connect() as conn:
        barred = {r.node for r in conn.execute(select(check_exclusions).where(check_exclusions.c.task_id == check_id))}
    assert barred == {SUBJECT, first}
    assert state.verification.reassign_checks(NOW + 3 * assign.ASSIGN_MS) == 0  # nobody is left to draw
    assert assignee(state, check_id) is None


def test_a_busy_assignee_keeps_its_check_until_the_check_wait(state: Store) -> None:
    """A one-slot node computing a shard cannot take its check yet: it is not barred for that
    (on a 2-node grid it is the only possible checker), but only as long as check_wait_ms."""
    check_id = checked_result(state)
    first = assignee(state, check_id)
    assert first is not None
    wait = 30_000
    make_job(state, job_id=JOB2, n=1, created=5)
    with state.engine.begin() as conn:  # the assignee computes another job's shard, its lease live throughout
        t = assign.s.tasks
        conn.execute(update(t).where(t.c.job_id == JOB2).values(state="leased", node=first, deadline_ms=NOW + 2 * wait))
    assert state.verification.reassign_checks(NOW + assign.ASSIGN_MS + 1, wait) == 0
    assert assignee(state, check_id) == first  # kept, not barred
    # past check_wait_ms the usual rule applies: barred, another drawn
    assert state.verification.reassign_checks(NOW + wait + 1, wait) == 1
    assert assignee(state, check_id) not in (first, SUBJECT, None)


def test_nodes_not_seen_lately_are_not_drawn(state: Store) -> None:
    with state.engine.begin() as conn:
        conn.execute(update(assign.s.nodes).where(assign.s.nodes.c.address == C).values(last_seen_ms=-(10**9)))
    check_id = checked_result(state)
    assert assignee(state, check_id) == B


def test_draws_favour_a_record_of_verified_work() -> None:
    assert assign.weight(20, 0) > assign.weight(5, 0) > assign.weight(0, 0) > assign.weight(0, 1)
    assert assign.weight(10**6, 0) == assign.weight(assign.MAX_STREAK_WEIGHT, 0)
    rng = random.Random(7)
    picks = [rng.choices(["new", "trusted"], [assign.weight(0, 0), assign.weight(20, 0)])[0] for _ in range(2000)]
    assert 0.9 < picks.count("trusted") / 2000 < 0.99


def _reputation(state: Store, node: str) -> tuple[int, int]:
    rep = state.verification.reputation(node)
    return rep.verified, rep.caught


def test_a_dispute_waits_for_the_referee_who_catches_the_subject(state: Store) -> None:
    check_id = checked_result(state)
    checker = assignee(state, check_id)
    assert checker is not None
    submit_check(state, checker, check_id, agrees=False)
    (pending,) = state.verification.pending_rulings()
    assert pending.check_id == check_id and pending.rows_limit == 0 and pending.checkers == [(checker, WRONG)]
    assert state.jobs.get_job(JOB).tasks_done == 1  # held: the job cannot finish while disputed
    assert state.verification.apply_ruling(
        check_id, Ruling(REF_OUT, subject_right=False, right_checkers=(checker,)), NOW + 3
    ) == (
        JOB,
        False,
    )
    assert _reputation(state, SUBJECT) == (0, 1) and _reputation(state, checker) == (1, 0)
    task = state.tasks.get_task(task_id_for(JOB, 0))
    assert task.state == "pending" and state.jobs.get_job(JOB).tasks_done == 0  # the subject's work is redone
    assert state.verification.pending_rulings() == []
    assert state.verification.apply_ruling(check_id, Ruling(REF_OUT, True, ()), NOW + 4) is None  # a ruling counts once


def test_the_referee_catches_a_lying_checker_and_verifies_the_subject(state: Store) -> None:
    check_id = checked_result(state)
    checker = assignee(state, check_id)
    assert checker is not None
    submit_check(state, checker, check_id, agrees=False)
    assert state.verification.apply_ruling(
        check_id, Ruling(REF_OUT, subject_right=True, right_checkers=()), NOW + 3
    ) == (JOB, True)
    assert _reputation(state, SUBJECT) == (1, 0) and _reputation(state, checker) == (0, 1)
    assert state.jobs.get_job(JOB).tasks_done == 1
    kinds = [e.kind for e in state.jobs.events_after(JOB, 0)]
    assert "disputed" in kinds and "caught" in kinds and "verified" in kinds


def test_two_newcomers_agreeing_need_the_referee_to_confirm(state: Store) -> None:
    check_id = checked_result(state)
    checker = assignee(state, check_id)
    assert checker is not None
    submit_check(state, checker, check_id, agrees=True)
    (pending,) = state.verification.pending_rulings()
    assert pending.rows_limit == 1  # all the check's rows: as many as the detection target asked for
    # The referee finds both wrong: a colluding pair is caught together.
    assert state.verification.apply_ruling(check_id, Ruling(REF_OUT, subject_right=False, right_checkers=()), NOW + 3)
    assert _reputation(state, SUBJECT) == (0, 1) and _reputation(state, checker) == (0, 1)


def test_the_referee_confirms_every_row_of_a_budget_sized_check(state: Store) -> None:
    # A 400-row shard is checked on 10 rows (the compute budget's cap): the referee's
    # confirmation re-runs all 10, sized from the subject's shard, not from the 10-row check.
    m = detection_rows(VerificationSpec(), 1, 400)
    assert m == 10
    check_id = checked_result(state, rows=400, sampled=tuple(range(0, 400, 40)))
    checker = assignee(state, check_id)
    assert checker is not None
    submit_check(state, checker, check_id, agrees=True, rows=m)
    (pending,) = state.verification.pending_rulings()
    assert pending.rows_limit == m


def test_an_open_check_says_what_its_confirmation_will_re_run(state: Store) -> None:
    # The referee re-runs an untrusted subject's check while the checker runs it
    # (services/verification/ahead.py): what rulings.ahead says must be the ruling's re-run.
    check_id = checked_result(state, rows=400, sampled=tuple(range(0, 400, 40)))
    ahead = state.verification.ahead(check_id)
    assert ahead is not None and (ahead.input_sha, ahead.rows) == (INPUT, 10)
    checker = assignee(state, check_id)
    assert checker is not None
    submit_check(state, checker, check_id, agrees=True, rows=10)
    assert state.verification.ahead(check_id) is None  # answered: no longer run ahead
    (pending,) = state.verification.pending_rulings()
    ran = run_key(ahead.model_sha, ahead.input_sha, ahead.rows, ahead.settings)
    assert ran == run_key(pending.model_sha, pending.input_sha, pending.rows_limit, pending.settings)


def test_a_canary_is_not_run_ahead(state: Store) -> None:
    check_id = checked_result(state)
    canary_id = "d1" * 32
    with state.engine.begin() as conn:
        subject = records._subject_row(conn, records.get_check(conn, check_id))
        records.open_check(conn, subject, CheckPlan(canary_id, BlobRef(INPUT, 0), (0,)), NOW, kind="canary")
    assert state.verification.ahead(canary_id) is None and state.verification.ahead(check_id) is not None


def trust(state: Store, nodes: tuple[str, ...], reward: int = 1000) -> None:
    """Make nodes trusted for JOB: a streak of 10 paid verified results from 3 other submitters."""
    set_job_price(state.engine, JOB, reward, reward * 100)
    with state.engine.begin() as conn:
        for node in nodes:
            conn.execute(reputation.insert().values(address=node, consecutive_valid=10, verified=10, caught=0))
            for k in range(3):
                row = dict(address=node, submitter=f"0x{k + 1:040x}", earned_wei=4 * reward, results=4)
                conn.execute(trust_earnings.insert().values(**row))


def test_a_trusted_checker_agreeing_verifies_at_once_only_if_the_subject_is_trusted_too(state: Store) -> None:
    trust(state, (B, C))
    check_id = checked_result(state)
    checker = assignee(state, check_id)
    assert checker is not None
    submit_check(state, checker, check_id, agrees=True)
    (pending,) = state.verification.pending_rulings()  # a trusted node vouching for a new one: confirmed
    assert pending.check_id == check_id and pending.rows_limit == 1


def test_two_trusted_nodes_agreeing_verify_at_once(state: Store) -> None:
    trust(state, (SUBJECT, B, C))
    check_id = checked_result(state)
    checker = assignee(state, check_id)
    assert checker is not None
    submit_check(state, checker, check_id, agrees=True)
    assert state.verification.pending_rulings() == []
    assert _reputation(state, SUBJECT) == (11, 0)
    assert state.jobs.jobs_to_aggregate() == [JOB]


def test_when_the_referee_cannot_run_a_third_node_breaks_the_tie(state: Store) -> None:
    check_id = checked_result(state)
    checker = assignee(state, check_id)
    assert checker is not None
    submit_check(state, checker, check_id, agrees=False)
    assert state.verification.fail_ruling(check_id, "RuntimeError: no CUDA here", NOW + 3) == JOB
    with state.engine.connect() as conn:
        kinds = [r.kind for r in conn.execute(select(checks.c.kind).where(checks.c.root_id == check_id))]
    assert sorted(kinds) == ["spotcheck", "tiebreak"]
    third = ({B, C} - {checker}).pop()
    (lease,), _ = state.tasks.lease_tasks(third, 1, NOW + 4, TIMING)
    assert lease.task_id != check_id  # the tiebreak, drawn to the one node not yet in the chain


def test_a_forged_result_does_not_use_up_the_tasks_attempts(state: Store) -> None:
    make_job(state, max_attempts=1)
    (lease,), _ = state.tasks.lease_tasks(B, 1, NOW, TIMING)
    state.tasks.reject_task_result(B, lease.task_id, 1, "bad receipt signature", NOW + 1, forged=True)
    assert state.jobs.get_job(JOB).state != JobState.FAILED
    assert state.tasks.get_task(lease.task_id).state == "pending"
    assert state.nodes.get_node(B).rejections == 1  # type: ignore[union-attr]
    (again,), _ = state.tasks.lease_tasks(C, 1, NOW + 2, TIMING)
    state.tasks.reject_task_result(C, again.task_id, 2, "output has 3 rows, the task's input has 1", NOW + 3)
    assert state.jobs.get_job(JOB).state == JobState.FAILED  # a workload-shaped rejection does count


def test_a_node_barred_from_a_job_still_gets_other_jobs_behind_it(state: Store) -> None:
    make_job(state, JOB, n=5, created=1)  # the queue's head
    make_job(state, JOB2, n=2, created=2)
    (got,) = state.tasks.lease_many([(B, 2)], NOW, TIMING, lambda conn, node: {JOB})
    assert isinstance(got, tuple)
    assert {x.job_id for x in got[0]} == {JOB2} and len(got[0]) == 2
    (none,) = state.tasks.lease_many([(B, 2)], NOW, TIMING, lambda conn, node: {JOB, JOB2})
    assert isinstance(none, tuple) and none[0] == []


def test_a_canary_that_proves_a_verified_result_wrong_takes_it_back(state: Store) -> None:
    trust(state, (SUBJECT, B, C))
    check_id = checked_result(state)
    checker = assignee(state, check_id)
    assert checker is not None
    submit_check(state, checker, check_id, agrees=True)  # verified by a trusted checker
    assert state.jobs.get_job(JOB).tasks_done == 1
    canary_id = "d1" * 32
    with state.engine.begin() as conn:
        subject = records._subject_row(conn, records.get_check(conn, check_id))
        records.open_check(conn, subject, CheckPlan(canary_id, BlobRef(INPUT, 0), (0,)), NOW, kind="canary")
    assert state.jobs.jobs_to_aggregate() == []  # the job waits for its canary
    canary_checker = assignee(state, canary_id)
    assert canary_checker is not None
    submit_check(state, canary_checker, canary_id, agrees=False)
    assert state.verification.apply_ruling(
        canary_id, Ruling(REF_OUT, subject_right=False, right_checkers=(canary_checker,)), NOW
    )
    assert state.tasks.get_task(task_id_for(JOB, 0)).state == "pending" and state.jobs.get_job(JOB).tasks_done == 0
    assert _reputation(state, SUBJECT)[1] == 1


def test_a_check_nobody_can_take_is_refereed_not_waved_through(state: Store) -> None:
    with state.engine.begin() as conn:  # the subject is the only node seen lately
        conn.execute(update(assign.s.nodes).where(assign.s.nodes.c.address != SUBJECT).values(last_seen_ms=-(10**9)))
    check_id = checked_result(state)
    assert assignee(state, check_id) is None
    assert state.verification.expire_checks(NOW + 10, wait_ms=1000) == []  # not yet
    assert state.verification.expire_checks(NOW + 5000, wait_ms=1000) == []  # handed to the referee, job still held
    (pending,) = state.verification.pending_rulings()
    assert pending.check_id == check_id and pending.checkers == []
    assert state.tasks.get_task(check_id).state == "cancelled"  # no node can take it any more
    assert state.verification.apply_ruling(
        check_id, Ruling(REF_OUT, subject_right=False, right_checkers=()), NOW + 6000
    )
    assert _reputation(state, SUBJECT) == (0, 1)


def test_a_check_whose_only_checker_let_its_lease_expire_is_refereed(state: Store) -> None:
    """A two-node grid: the one possible checker leases the check and goes silent (say the
    coordinator restarted under it). Barred and with nobody left to draw, the check must still
    reach the referee, or the job waits for it forever."""
    with state.engine.begin() as conn:
        conn.execute(update(assign.s.nodes).where(assign.s.nodes.c.address == C).values(last_seen_ms=-(10**9)))
    check_id = checked_result(state)
    assert assignee(state, check_id) == B
    (lease,), _ = state.tasks.lease_tasks(B, 1, NOW + 1, TIMING)
    assert lease.task_id == check_id
    late = NOW + TIMING.ttl_ms + TIMING.grace_ms + assign.ASSIGN_MS + 10
    assert state.tasks.reap_expired(late) == 1
    assert state.verification.reassign_checks(late) == 0 and assignee(state, check_id) is None
    assert state.verification.expire_checks(late, wait_ms=1000) == []  # handed to the referee
    (pending,) = state.verification.pending_rulings()
    assert pending.check_id == check_id
    assert state.tasks.get_task(check_id).state == "cancelled"


def test_if_the_referee_cannot_run_either_the_check_passes_unverified(state: Store) -> None:
    with state.engine.begin() as conn:
        conn.execute(update(assign.s.nodes).where(assign.s.nodes.c.address != SUBJECT).values(last_seen_ms=-(10**9)))
    check_id = checked_result(state)
    state.verification.expire_checks(NOW + 5000, wait_ms=1000)
    assert state.verification.fail_ruling(check_id, "RuntimeError: cannot load", NOW + 6000) == JOB
    kinds = [e.kind for e in state.jobs.events_after(JOB, 0)]
    assert "unverified" in kinds and state.jobs.jobs_to_aggregate() == [JOB]
