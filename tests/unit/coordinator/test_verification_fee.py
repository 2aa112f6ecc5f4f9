"""The verification fee: checkers proven right are paid from the escrow, in whole rewards.

On SQLite and PostgreSQL through the accepting transaction and the rulings (no gRPC, no torch;
tests/integration/test_settlement.py pays checkers on a devnet). Abuses tried: a checker the
referee proves wrong asks to be paid; checks outrun the fee the escrow funded; a job whose
escrow funded no fee; a checker that re-ran few rows of a big task wins as often as a full one.
Checkers paid when nobody is blamed: tests/unit/coordinator/test_fairness.py.
"""

from __future__ import annotations

import random

from sqlalchemy import select

from coordinator.db import schema as s
from coordinator.kinds.inference.effects import OpenCheck, SettleCheck
from coordinator.repositories.ledger.credits import set_job_price
from coordinator.repositories.store import Store
from coordinator.repositories.verification import fees
from coordinator.repositories.verification.checks import CheckPlan, Verdict
from coordinator.repositories.verification.rulings import Ruling
from coordinator.services.acceptance import ResultAcceptance, ResultItem
from tensorgrid.crypto import normalize_address
from tensorgrid.spec import VerificationSpec
from tensorgrid.spec.verification import detection_rows, fee_tasks
from tensorgrid.types import BlobRef
from tests.unit.coordinator.test_checkers import (
    INPUT,
    JOB,
    NOW,
    OUT,
    REF_OUT,
    SUBJECT,
    TIMING,
    B,
    C,
    assignee,
    checked_result,
    make_job,
    receipt,
    state,
    submit_check,
    trust,
)

__all__ = ["state"]  # the Store fixture, shared with test_checkers
REWARD = 1000
AGREES = Verdict(agrees_subject=True, agrees_checkers=())


def credits_of(st: Store, node: str) -> list[tuple[str, int]]:
    c = s.credits
    with st.engine.connect() as conn:
        rows = conn.execute(
            select(c.c.task_id, c.c.amount_wei).where(c.c.node == normalize_address(node), ~c.c.void)
        ).all()
    return [(r.task_id, int(r.amount_wei)) for r in rows]


def report(st: Store) -> tuple[int, int]:
    with st.engine.connect() as conn:
        return fees.fee_budget(conn, JOB)


def disputed(st: Store, budget_rewards: int = 10, rows: int = 1, sampled: tuple[int, ...] = (0,)) -> tuple[str, str]:
    """A priced job whose one result's check was answered by a disagreeing checker: (check id, checker)."""
    set_job_price(st.engine, JOB, REWARD, budget_rewards * REWARD)
    check_id = checked_result(st, rows=rows, sampled=sampled)
    checker = assignee(st, check_id)
    assert checker is not None
    submit_check(st, checker, check_id, agrees=False, rows=len(sampled))
    return check_id, checker


def test_the_fee_covers_a_new_nodes_checks_and_nothing_when_nothing_is_checked() -> None:
    spec = VerificationSpec()
    assert fee_tasks(VerificationSpec(mode="none"), 100, 1000) == 0
    assert fee_tasks(spec, 0, 1000) == 0
    replicate = fee_tasks(VerificationSpec(mode="replicate", canary_rate=0.0), 10, 1000)
    assert replicate == 10  # every result re-run whole: one reward each, no draw
    # big jobs: the fee stays near the share of rows checks re-run (2.5%), plus canaries
    assert fee_tasks(spec, 1000, 1024) <= 0.05 * 1000
    # the fee is rarely outrun: simulate the draws of a job whose every result is checked
    rng = random.Random(7)
    for tasks, rows in ((10, 100), (24, 1024), (300, 1000)):
        m = detection_rows(spec, tasks, rows)
        fee = fee_tasks(spec, tasks, rows)
        wins = [
            sum(rng.random() < m / rows for _ in range(tasks))
            + sum(rng.random() < spec.canary_rate for _ in range(tasks))
            for _ in range(2000)
        ]
        assert sum(w > fee for w in wins) / len(wins) < 0.05, (tasks, rows, fee)
        assert fee < tasks * (m / rows + spec.canary_rate) + 3 * (tasks**0.5) + 1  # not wildly over


def test_a_checker_proven_right_wins_a_whole_reward_for_a_whole_task(state: Store) -> None:
    trust(state, (SUBJECT, B, C), reward=REWARD)  # budget: 100 rewards
    check_id = checked_result(state)  # a one-row task, checked on its one row: the draw always wins
    checker = assignee(state, check_id)
    assert checker is not None
    submit_check(state, checker, check_id, agrees=True)  # two trusted nodes agree: verified at once
    assert credits_of(state, checker) == [(check_id, REWARD)]
    assert report(state) == (99 * REWARD, REWARD)  # 100 funded, 1 task: 99 rewards of fee


def test_a_checker_the_referee_proves_wrong_is_not_paid_and_a_right_one_is(state: Store) -> None:
    check_id, checker = disputed(state)
    state.verification.apply_ruling(check_id, Ruling(REF_OUT, subject_right=True, right_checkers=()), NOW + 3)
    assert credits_of(state, checker) == []  # it lied against an honest subject
    assert [amount for _, amount in credits_of(state, SUBJECT)] == [REWARD]


def test_a_checker_that_catches_a_liar_is_paid(state: Store) -> None:
    check_id, checker = disputed(state)
    state.verification.apply_ruling(check_id, Ruling(REF_OUT, subject_right=False, right_checkers=(checker,)), NOW + 3)
    assert credits_of(state, checker) == [(check_id, REWARD)]
    assert credits_of(state, SUBJECT) == []  # caught: never paid


def test_the_draw_pays_in_proportion_to_the_rows_re_run(state: Store) -> None:
    """A check of 10 rows of a 400-row task wins with probability 10/400: draws below 10 win."""
    check_id, checker = disputed(state, rows=400, sampled=tuple(range(0, 400, 40)))  # nobody paid yet
    with state.engine.begin() as conn:
        assert fees.pay_checkers(conn, check_id, [checker], NOW, draw=lambda n: 10) == 0  # 10 of 400: lost
        assert fees.pay_checkers(conn, check_id, [checker], NOW, draw=lambda n: 9) == 1
        assert fees.pay_checkers(conn, check_id, [checker], NOW, draw=lambda n: 0) == 0  # paid once per check
    assert credits_of(state, checker) == [(check_id, REWARD)]


def test_wins_stop_at_the_fee_the_escrow_funded(state: Store) -> None:
    """Two tasks and an escrow of three rewards: one reward of fee, so the second winner is not paid."""
    trust(state, (SUBJECT, B, C), reward=REWARD)  # agreement verifies at once
    set_job_price(state.engine, JOB, REWARD, 3 * REWARD)
    make_job(state, n=2)
    leases, _ = state.tasks.lease_tasks(SUBJECT, 2, NOW, TIMING)
    plans = [CheckPlan(f"c{i}" * 32, BlobRef(INPUT, 0), (0,)) for i in range(2)]
    items = [
        ResultItem(SUBJECT, receipt(lease.task_id, 1), BlobRef(OUT, 3), 1, OpenCheck(plan))
        for lease, plan in zip(leases, plans, strict=True)
    ]
    ResultAcceptance(state.engine).accept_results(items, NOW)
    for plan in plans:
        checker = assignee(state, plan.check_task_id)
        assert checker is not None
        (lease,), _ = state.tasks.lease_tasks(checker, 1, NOW + 1, TIMING)
        item = ResultItem(checker, receipt(lease.task_id, lease.attempt), BlobRef(OUT, 3), 1, SettleCheck(AGREES))
        ResultAcceptance(state.engine).accept_results([item], NOW + 2)
    assert report(state) == (REWARD, REWARD)
    with state.engine.connect() as conn:
        assert fees.fee_won(conn, JOB) == 1
        assert conn.execute(select(s.checks.c.outcome)).scalars().all() == ["verified", "verified"]


def test_an_escrow_without_a_fee_pays_no_checker(state: Store) -> None:
    check_id, checker = disputed(state, budget_rewards=1)  # exactly its one task
    state.verification.apply_ruling(check_id, Ruling(REF_OUT, subject_right=False, right_checkers=(checker,)), NOW + 3)
    assert credits_of(state, checker) == [] and report(state) == (0, 0)
