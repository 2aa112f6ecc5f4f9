"""Pay for a proven failure (repositories/ledger/claim_pay.py), on SQLite and PostgreSQL: the
nodes whose claims the referee's failed run confirmed win one reward each with probability
(work the run did before the failure ÷ the task's work), credited from the job's escrow; a
claim the referee disproved, one confirmed by the quorum after an undecided review, or by the
second-claim rule of a kind the referee does not review, earns nothing; nothing is credited
beyond the escrow nor ahead of what the job still owes others; a second payer or a restart
never pays twice. And the review finds how far the run got: the failing batch, by bisection.

The referee's runs are in process here (tests/security/test_claim_pay.py runs a real
coordinator, its referee's child and two nodes)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sqlalchemy import select

from coordinator.db import schema as s
from coordinator.repositories import claims
from coordinator.repositories.ledger import claim_pay, escrow
from coordinator.repositories.ledger.credits import set_job_price
from coordinator.repositories.ledger.statements import node_earnings
from coordinator.repositories.store import Store
from tensorgrid.blobs import BlobStore
from tensorgrid.crypto import normalize_address
from tensorgrid.sandbox import SandboxFailure
from tensorgrid.types import JobState
from tests.unit.coordinator import test_review_parts as parts
from tests.unit.coordinator.test_claim_reviews import A, B, C, contested
from tests.unit.coordinator.test_claims import AVOID, TASK, claim
from tests.unit.coordinator.test_review_parts import Clock, turn
from tests.unit.coordinator.test_review_rows import ROWS, Rows, contested_rows, reviews
from tests.unit.coordinator.test_storage import CPU, JOB, add_nodes, make_job

state, blobs, clock = parts.state, parts.blobs, parts.clock  # the fixtures: a store on each database

REWARD = 1000
D = "0x" + "dd" * 20
T = 3 * AVOID  # when the referee rules


def draws(*values: int) -> claim_pay.Draw:
    """randbelow answering `values` in order (the claimants are drawn in address order)."""
    it = iter(values)
    return lambda n: next(it)


def priced(state: Store, tasks: int = 1, budget_rewards: int = 3, max_attempts: int = 2) -> None:
    make_job(state, n=tasks, max_attempts=max_attempts)
    set_job_price(state.engine, JOB, REWARD, budget_rewards * REWARD)
    contested(state)  # A and B claimed task 0: it waits for the referee


def paid(state: Store) -> dict[str, int]:
    """Every node's live credits of the job, in wei."""
    c = s.credits.c
    with state.engine.connect() as conn:
        rows = conn.execute(select(c.node, c.amount_wei).where(c.job_id == JOB, ~c.void)).all()
    out: dict[str, int] = {}
    for r in rows:
        out[r.node] = out.get(r.node, 0) + int(r.amount_wei)
    return out


def credited_wei(state: Store) -> int:
    with state.engine.connect() as conn:
        return int(conn.execute(select(s.job_prices.c.credited_wei)).scalar_one())


def events(state: Store) -> list[str]:
    return [e.message for e in state.jobs.events_after(JOB, 0) if e.kind == claim_pay.EVENT]


def release(state: Store, now_ms: int) -> None:
    with state.engine.begin() as conn:
        escrow.release_ended_jobs(conn, now_ms)


def test_the_claimants_of_a_failed_run_win_by_the_share_of_work_and_are_credited(state: Store) -> None:
    priced(state)
    # the run failed after 90 of 96 rows: A's draw 10 < 90 wins, B's 90 does not
    assert state.reviews.settle_review(TASK, claims.FAILED, "raised", T, (90, 96), draws(10, 90)) == JOB
    assert state.jobs.get_job(JOB).state == JobState.FAILED  # both claims believed: its 2 attempts spent
    assert paid(state) == {normalize_address(A): REWARD}
    with state.engine.connect() as conn:  # a node's earnings show it
        assert node_earnings(conn)[normalize_address(A)] == (REWARD, 0)
    said = events(state)
    assert "failed after 90 of its 96 units of work" in said[0] and f"{A} won one reward" in said[0]
    assert f"{B} won nothing" in said[0] and f"claimant {A} of task 0 paid one reward" in said[1]
    with state.engine.connect() as conn:  # the job's verification report (`tensorgrid job status`)
        assert claim_pay.claims_pay(conn, JOB) == (2, REWARD)


@pytest.mark.parametrize("u", [0, 44, 45, 95])
def test_a_claim_wins_exactly_when_its_draw_is_below_the_work_done(state: Store, u: int) -> None:
    """Over the draw's uniform range [0, work) a claim wins for `done` values of it: its
    expected pay is done / work of a reward (45 / 96 here)."""
    priced(state, budget_rewards=4)
    state.reviews.settle_review(TASK, claims.FAILED, "raised", T, (45, 96), draws(u, u))
    won = u < 45
    assert paid(state) == ({normalize_address(A): REWARD, normalize_address(B): REWARD} if won else {})


def test_the_draw_is_uniform_over_the_work_so_the_expected_pay_is_the_share(state: Store) -> None:
    priced(state)
    rng = random.Random(7)
    seen: list[int] = []

    def draw(n: int) -> int:
        seen.append(n)
        return rng.randrange(n)

    state.reviews.settle_review(TASK, claims.FAILED, "raised", T, (0, 96), draw)
    assert seen == [96, 96] and paid(state) == {}  # a failure on the first batch: nothing ran, nothing won


def test_a_disproved_claim_pays_nothing(state: Store) -> None:
    priced(state, max_attempts=3)
    assert state.reviews.settle_review(TASK, claims.CLEAN, "ran", T, (96, 96), draws(0, 0)) == JOB
    assert claim(state, C, 4 * AVOID) is True  # a later claim: unconfirmed, a refusal, no pay
    release(state, 5 * AVOID)
    assert paid(state) == {} and events(state) == []


def test_claims_confirmed_by_the_quorum_after_an_undecided_review_pay_nothing(state: Store) -> None:
    priced(state, max_attempts=4, budget_rewards=5)
    state.nodes.register_node(D, CPU, f"{10:064x}", 0, 10**9, f"nonce-{D}")  # beside A, B and C
    state.reviews.settle_review(TASK, claims.UNDECIDED, "over its budget", T, (90, 96), draws(0, 0))
    assert claim(state, C, 4 * AVOID) is True
    assert claim(state, D, 5 * AVOID) is False  # the quorum: every claim believed, the job fails
    assert state.jobs.get_job(JOB).state == JobState.FAILED
    release(state, 6 * AVOID)
    assert paid(state) == {} and events(state) == []  # no run proved the failure: no pay


def test_the_second_claim_rule_of_an_unreviewed_kind_pays_nothing(state: Store) -> None:
    state.tasks.reviewed = frozenset()  # the referee cannot run this kind: two claims confirm
    make_job(state, n=1, max_attempts=2)
    set_job_price(state.engine, JOB, REWARD, 3 * REWARD)
    add_nodes(state, (A, CPU), (B, CPU))
    assert claim(state, A, AVOID) is True and claim(state, B, 2 * AVOID) is False
    release(state, 3 * AVOID)
    assert state.jobs.get_job(JOB).state == JobState.FAILED and paid(state) == {}


def test_nothing_is_credited_beyond_the_escrow(state: Store) -> None:
    priced(state, budget_rewards=1)  # the escrow funds one reward; both claimants win
    state.reviews.settle_review(TASK, claims.FAILED, "raised", T, (96, 96), draws(0, 0))
    release(state, 4 * AVOID)  # the job ended: its last charge; the second win has no room even now
    assert sum(paid(state).values()) == credited_wei(state) == REWARD
    with state.engine.connect() as conn:
        assert claim_pay.unpaid_wins(conn, JOB) == 1


def test_wins_wait_while_the_job_owes_its_other_tasks_and_are_paid_when_it_ends(
    state: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    priced(state, tasks=3, budget_rewards=3, max_attempts=3)  # no room beyond its three tasks
    state.reviews.settle_review(TASK, claims.FAILED, "raised", T, (50, 96), draws(0, 0))
    assert state.jobs.get_job(JOB).state == JobState.RUNNING and paid(state) == {}  # won, owed to others first
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: 0)  # the OS's draw for C's claim: a win
    assert claim(state, C, 4 * AVOID) is False  # believed because the referee's run failed: its last attempt
    assert state.jobs.get_job(JOB).state == JobState.FAILED  # its other tasks cancelled: their rewards free
    assert paid(state) == {normalize_address(n): REWARD for n in (A, B, C)}  # paid as the job ended
    release(state, 5 * AVOID)
    assert credited_wei(state) == 3 * REWARD


def test_a_second_payer_or_a_restart_never_pays_twice(state: Store, db_url: str) -> None:
    priced(state, tasks=2, budget_rewards=2, max_attempts=3)
    state.reviews.settle_review(TASK, claims.FAILED, "raised", T, (60, 96), draws(0, 70))  # A wins, B not
    assert paid(state) == {}  # task 1 is still owed: A's win waits
    assert state.reviews.settle_review(TASK, claims.FAILED, "again", T, (96, 96), draws(0, 0)) is None
    state.close()
    restarted = Store(db_url)  # a new coordinator process: only the database is left
    restarted.tasks.reviewed = frozenset({"noop"})
    try:
        with restarted.engine.begin() as conn:  # drawn once: entitling again changes nothing
            assert claim_pay.entitle(conn, TASK, [A, B], 96, 96, 6 * AVOID, draws(0, 0)) == []
            conn.execute(s.jobs.update().values(state=JobState.FAILED.value))
            conn.execute(s.tasks.update().values(state="cancelled"))
        for t in (7, 8):  # two settlement ticks (or two replicas): paid once
            with restarted.engine.begin() as conn:
                claim_pay.pay(conn, JOB, t * AVOID)
        release(restarted, 9 * AVOID)
        assert paid(restarted) == {normalize_address(A): REWARD} and credited_wei(restarted) == REWARD
    finally:
        restarted.close()


def work(state: Store) -> set[tuple[int, int, bool]]:
    c = s.failure_claims.c
    with state.engine.connect() as conn:
        return {(r.work_done, r.work_total, r.won) for r in conn.execute(select(c.work_done, c.work_total, c.won))}


def review(state: Store, blobs: BlobStore, run: Rows) -> int:
    r = reviews(state, blobs, run)
    r.budget_factor = 100.0
    turns = 0
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
        turns += 1
    return turns


def test_a_review_that_raises_finds_the_failing_batch_for_the_pay(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: n - 1)  # both lose: the job's pay is not tested
    contested_rows(state, blobs, tmp_path, time_limit_ms=5_000)  # fits a part: the whole input runs first
    run = Rows(clock, fail_at=93)  # the program raises on the last batch (rows 92-95)
    turns = review(state, blobs, run)
    assert work(state) == {(92, ROWS, False)}  # every row before the failing batch ran
    assert turns == 1 + 5 + 1  # the whole input, a bisection of 24 batches, then the verdict
    assert sum(len(rows) for rows in run.runs) <= ROWS  # at most the rows once more
    assert state.jobs.get_job(JOB).state == JobState.FAILED


def test_a_review_in_parts_that_raises_pays_for_the_rows_before_the_failing_batch(
    state: Store, blobs: BlobStore, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: 0)  # both win
    contested_rows(state, blobs, tmp_path)
    set_job_price(state.engine, JOB, REWARD, 2 * REWARD)
    review(state, blobs, Rows(clock, fail_at=50))
    assert work(state) == {(48, ROWS, True)}
    assert paid(state) == {normalize_address(A): REWARD, normalize_address(B): REWARD}


def test_a_training_review_that_fails_pays_for_the_inner_steps_its_parts_ran(
    state: Store, blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claim_pay.secrets, "randbelow", lambda n: n - 1)  # both lose: the job's pay is not tested
    parts.stored_job(state, blobs)
    r = parts.reviews(state, blobs, parts.Steps(fail={3: SandboxFailure("error", "ValueError: a bad step")}))
    while state.tasks.get_task(TASK).state == "contested":
        turn(r)
    assert work(state) == {(2, parts.STEPS, False)}  # the parts before the one that raised: two inner steps
