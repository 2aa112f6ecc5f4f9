"""Fair to honest nodes whatever the submitter sends: no blame without a sound re-execution,
no dispute without end, trust that cannot be farmed, checks that look like any task.

Through the repositories and the accepting transaction, on SQLite and PostgreSQL (the
referee's re-execution is given as a Ruling; the integration adversary suite runs it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from coordinator.db import schema as s
from coordinator.repositories.ledger.credits import set_job_price
from coordinator.repositories.store import Store
from coordinator.repositories.verification import ending, trust
from coordinator.repositories.verification.rulings import Ruling
from tensorgrid.types import JobState
from tests.unit.coordinator.test_checkers import (
    CPU,
    JOB,
    NOW,
    REF_OUT,
    SUBJECT,
    TIMING,
    assignee,
    checked_result,
    make_job,
    submit_check,
)

REWARD = 1000


@pytest.fixture
def state(db_url: str) -> Iterator[Store]:
    store = Store(db_url)
    for i, addr in enumerate((SUBJECT, "0x" + "bb" * 20, "0x" + "cc" * 20)):
        store.nodes.register_node(addr, CPU, f"{i:064x}", NOW, 10**9, f"nonce-{addr}")
    yield store
    store.close()


def _credits(state: Store) -> dict[str, int]:
    with state.engine.connect() as conn:
        rows = conn.execute(select(s.credits.c.node, func.count()).group_by(s.credits.c.node)).all()
    return {r[0].lower(): int(r[1]) for r in rows}


def _caught(state: Store, node: str) -> int:
    return state.verification.reputation(node).caught


def test_an_unverifiable_program_ends_the_dispute_without_blame(state: Store) -> None:
    set_job_price(state.engine, JOB, REWARD, REWARD * 10)
    check_id = checked_result(state)
    checker = assignee(state, check_id)
    assert checker is not None
    submit_check(state, checker, check_id, agrees=False)  # row-dependent program: the sample disagrees
    why = "rows gave different outputs in the shard's batches than on their own"
    assert state.verification.apply_ruling(check_id, Ruling("", False, (), why), NOW + 3) == (JOB, False)
    assert _caught(state, SUBJECT) == 0 and _caught(state, checker) == 0
    assert _credits(state) == {SUBJECT: 1, checker: 1}  # the honest subject is paid, its checker from the fee
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and "not verifiable" in job.error and why in job.error
    with state.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.slashes)).scalar_one() == 0


def _dispute(state: Store, round_: int, output: str) -> None:
    """One result of the job's task, `output`, taken back: its checker disagreed and the referee
    sided with the checker. Two nodes take turns, and may take the task again at once."""
    from coordinator.kinds.inference.effects import OpenCheck
    from coordinator.repositories.verification.checks import CheckPlan
    from coordinator.services.acceptance import ResultAcceptance, ResultItem
    from tensorgrid.types import BlobRef
    from tests.unit.coordinator.test_checkers import receipt

    node = SUBJECT if round_ % 2 == 0 else "0x" + "bb" * 20
    (lease,), _ = state.tasks.lease_tasks(node, 1, NOW, TIMING)
    plan = CheckPlan(f"{round_ + 1:02x}" * 32, BlobRef("ee" * 32, 0), (0,))
    item = ResultItem(node, receipt(lease.task_id, lease.attempt), BlobRef(output, 3), 1, OpenCheck(plan))
    ResultAcceptance(state.engine).accept_results([item], NOW)
    checker = assignee(state, plan.check_task_id)
    assert checker is not None
    submit_check(state, checker, plan.check_task_id, agrees=False)
    state.verification.apply_ruling(plan.check_task_id, Ruling(REF_OUT, False, (checker,)), NOW + 3)
    with state.engine.begin() as conn:
        conn.execute(s.tasks.update().values(last_failed_node=None))


def test_a_task_disputed_without_end_fails_its_job(state: Store) -> None:
    # honest nodes all giving the output the referee rejects: the program or the referee is at fault
    from tests.unit.coordinator.test_checkers import OUT

    make_job(state, n=1, max_attempts=100)
    for round_ in range(ending.MAX_DISPUTE_ROUNDS):
        assert state.jobs.get_job(JOB).state != JobState.FAILED
        _dispute(state, round_, OUT)
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and f"{ending.MAX_DISPUTE_ROUNDS} results were disputed" in job.error


def test_cheaters_caught_in_turn_on_one_task_do_not_end_its_job_soon(state: Store) -> None:
    # sybils leasing the task one after another, each caught with an output of its own: that
    # many catches fail no submitter's job; only MAX_DISPUTES_ANY_OUTPUT of them end it
    make_job(state, n=1, max_attempts=100)
    for round_ in range(ending.MAX_DISPUTES_ANY_OUTPUT):
        assert state.jobs.get_job(JOB).state != JobState.FAILED, f"failed after {round_} catches"
        _dispute(state, round_, f"{round_ + 1:02x}" * 32)
    job = state.jobs.get_job(JOB)
    assert job.state == JobState.FAILED and f"{ending.MAX_DISPUTES_ANY_OUTPUT} results were disputed" in job.error


def test_a_confirmation_that_could_not_run_verifies_nothing(state: Store) -> None:
    set_job_price(state.engine, JOB, REWARD, REWARD * 10)
    check_id = checked_result(state)
    checker = assignee(state, check_id)
    assert checker is not None
    submit_check(state, checker, check_id, agrees=True)  # two newcomers agree: the referee must confirm
    assert state.verification.fail_ruling(check_id, "RuntimeError: cannot load", NOW + 3) == JOB
    kinds = [e.kind for e in state.jobs.events_after(JOB, 0)]
    assert "unverified" in kinds and "verified" not in kinds
    assert state.verification.reputation(SUBJECT).consecutive_valid == 0
    assert state.verification.reputation(checker).consecutive_valid == 0
    assert _credits(state) == {SUBJECT: 1, checker: 1}  # paid all the same (the checker from the fee)


def test_trust_grows_only_on_paid_jobs_of_several_submitters_weighted_by_reward(state: Store) -> None:
    node = "0x" + "dd" * 20
    with state.engine.begin() as conn:
        for _ in range(50):  # a Sybil's own unpaid job: verified, but no streak
            trust.bump(conn, [node], valid=True, job_id=JOB)
        assert trust.consecutive_valid(conn, node) == 0
    set_job_price(state.engine, JOB, REWARD, REWARD * 100)
    with state.engine.begin() as conn:
        for _ in range(10):  # paid, but all from one submitter (JOB's)
            trust.bump(conn, [node], valid=True, job_id=JOB)
        assert trust.consecutive_valid(conn, node) == 10
        assert trust.streak_for_job(conn, node, JOB, 10) == 0  # not trusted on its own submitter's job
        other = "ef" * 32
    make_job(state, other)
    with state.engine.begin() as conn:
        assert trust.streak_for_job(conn, node, other, 10) == 0  # one other submitter is not enough
        for k in range(3):
            conn.execute(
                s.trust_earnings.insert().values(address=node, submitter=f"0x{k + 1:040x}", earned_wei=100, results=1)
            )
    set_job_price(state.engine, other, REWARD, REWARD * 100)
    with state.engine.begin() as conn:
        assert trust.streak_for_job(conn, node, other, 10) == 0  # 3 submitters, but far less than 10 x reward
        conn.execute(s.trust_earnings.update().where(s.trust_earnings.c.address == node).values(earned_wei=4000))
        assert trust.streak_for_job(conn, node, other, 10) == 10
        trust.bump(conn, [node], valid=False, job_id=other)  # caught: all of it is gone
        assert trust.streak_for_job(conn, node, other, 10) == 0


def test_checks_are_queued_in_their_jobs_turn_with_fresh_ids(state: Store) -> None:
    check_id = checked_result(state)
    with state.engine.connect() as conn:
        task = conn.execute(select(s.tasks).where(s.tasks.c.task_id == check_id)).one()
        job = conn.execute(select(s.jobs.c.created_ms).where(s.jobs.c.job_id == JOB)).scalar_one()
    assert task.job_created_ms == job > 0  # not ahead of every other job's work
    assert task.task_id not in {t for t in _ids(state) if t != check_id}
    assert len(task.task_id) == 64


def _ids(state: Store) -> set[str]:
    with state.engine.connect() as conn:
        return {r.task_id for r in conn.execute(select(s.tasks.c.task_id))}


def test_a_canary_follows_a_verified_check_with_an_input_of_its_own(state: Store) -> None:
    from coordinator.kinds.inference.effects import OpenCheck
    from coordinator.repositories.verification.checks import CheckPlan
    from coordinator.services.acceptance import ResultAcceptance, ResultItem
    from tensorgrid.types import BlobRef
    from tests.unit.coordinator.test_checkers import INPUT, OUT, receipt

    make_job(state)
    (lease,), _ = state.tasks.lease_tasks(SUBJECT, 1, NOW, TIMING)
    shuffled = CheckPlan("ca" * 32, BlobRef("dd" * 32, 7), (0,))
    plan = CheckPlan("c1" * 32, BlobRef(INPUT, 0), (0,), shuffled)
    item = ResultItem(SUBJECT, receipt(lease.task_id, 1), BlobRef(OUT, 3), 1, OpenCheck(plan))
    ResultAcceptance(state.engine).accept_results([item], NOW)
    checker = assignee(state, plan.check_task_id)
    assert checker is not None
    with state.engine.connect() as conn:
        assert conn.execute(select(s.tasks).where(s.tasks.c.task_id == shuffled.check_task_id)).first() is None
    submit_check(state, checker, plan.check_task_id, agrees=True)
    state.verification.apply_ruling(plan.check_task_id, Ruling(REF_OUT, True, (checker,)), NOW + 3)
    with state.engine.connect() as conn:
        canary = conn.execute(select(s.tasks).where(s.tasks.c.task_id == shuffled.check_task_id)).one()
        kind = conn.execute(select(s.checks.c.kind).where(s.checks.c.check_id == shuffled.check_task_id)).scalar()
    assert kind == "canary" and canary.input_sha == "dd" * 32 != INPUT  # not the shard's hash
    assert state.jobs.jobs_to_aggregate() == []  # the job waits for its canary
