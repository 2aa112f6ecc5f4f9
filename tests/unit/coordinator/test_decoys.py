"""Decoys: m-row tasks carved out of a job's shards so a check cannot be told by its size, paid by
rows (one reward with probability m / shard rows). Planning and the size argument are pure; the
pay runs through the accepting transaction on SQLite and PostgreSQL (no torch, no gRPC:
tests/integration/test_settlement.py runs decoys on a real grid and chain)."""

from __future__ import annotations

import json
import random
import secrets

import pytest
from sqlalchemy import select

from coordinator.db import schema as s
from coordinator.repositories.jobs import NewTask
from coordinator.repositories.ledger import credits, decoys
from coordinator.repositories.store import Store
from coordinator.repositories.verification import fees
from coordinator.services.acceptance import ResultAcceptance, ResultItem
from coordinator.services.verification.decoys import carve
from coordinator.services.verification.policy import VerificationPolicy
from tensorgrid.errors import SpecError
from tensorgrid.spec import InferenceSpec, VerificationSpec, canonical_json, parse_spec, task_id_for
from tensorgrid.spec.verification import decoy_plan, detection_rows, fee_tasks, shards_of
from tensorgrid.types import BlobRef
from tests.jobs import new_job
from tests.unit.coordinator.test_checkers import INPUT, NOW, OUT, SUBJECT, TIMING, receipt, state
from tests.unit.coordinator.test_checkers import JOB as CHECKED_JOB
from tests.unit.coordinator.test_verification_fee import disputed

__all__ = ["state"]  # the Store fixture, shared with test_checkers
JOB = "de" * 32
REWARD = 1000
MODEL, INPUTS = BlobRef("aa" * 32, 1), BlobRef("bb" * 32, 1)


@pytest.mark.parametrize(("rows", "shard", "d", "m"), [(98_304, 4096, 24, 10), (1000, 100, 10, 3), (250, 16, 20, 1)])
def test_decoys_are_m_rows_and_every_row_is_in_one_task_in_order(rows: int, shard: int, d: int, m: int) -> None:
    for seed in range(5):
        pieces = carve(rows, shard, d, m, random.Random(seed).randrange)
        assert pieces[0].start == 0 and pieces[-1].end == rows
        assert all(a.end == b.start for a, b in zip(pieces, pieces[1:], strict=False))  # in order, no gap, no overlap
        assert sum(p.rows for p in pieces) == rows
        assert [p.rows for p in pieces if p.decoy] == [m] * d
        # every piece lies inside one shard (so a shard's rows are computed exactly once), and what is
        # left of a carved shard is still bigger than a check
        assert all(p.start // shard == (p.end - 1) // shard for p in pieces)
        full = [p for p in pieces if not p.decoy and p.end <= rows - rows % shard]
        assert all(p.rows > m for p in full)


def test_decoys_land_anywhere_in_their_shards() -> None:
    starts = {
        p.start % 100 for seed in range(40) for p in carve(1000, 100, 9, 5, random.Random(seed).randrange) if p.decoy
    }
    assert 0 in starts and max(starts) >= 90  # at a shard's start, in its middle and at its end


def test_decoys_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        carve(300, 100, 7, 30, secrets.randbelow)  # 2 full shards x 2 each
    assert [p.decoy for p in carve(300, 100, 0, 30)] == [False] * 3


def test_decoy_plan_keeps_m_and_the_compute_budget() -> None:
    v = VerificationSpec(decoys=1)
    assert decoy_plan(v, 24, 4096) == (24, 20)  # benchmarks.verification's shape: D = T
    assert detection_rows(v, 24, 4096) == 20  # m as without decoys: the shards' checks reach the target alone
    assert decoy_plan(VerificationSpec(decoys=0), 24, 4096) == (0, 20)
    assert decoy_plan(v, 6, 500) == (0, 12)  # checks at the 5% budget already: none left for decoys' checks
    assert decoy_plan(v, 100, 1000) == (100, 5)  # (T + D)·m within T·budget_rows(S)
    assert decoy_plan(VerificationSpec(decoys=4), 100, 1000) == (400, 5)
    assert decoy_plan(VerificationSpec(decoys=4, spot_rows=10), 100, 1000) == (150, 10)  # what the budget leaves
    assert decoy_plan(VerificationSpec(decoys=0.5), 24, 4096)[0] == 12
    assert decoy_plan(VerificationSpec(mode="replicate"), 24, 4096) == (0, 4096)
    assert decoy_plan(v, 1, 4096)[0] == 0  # one shard: nothing that is always full to carve from
    assert decoy_plan(VerificationSpec(spot_rows=40, decoys=1), 4, 100) == (
        0,
        40,
    )  # 100-row shards cannot spare 40-row decoys
    for t in range(1, 300):  # T -> T + D only grows, so the planned count gives the shards back
        assert shards_of(v, t + decoy_plan(v, t, 512)[0], 512) == t


def test_decoys_leave_the_detection_of_a_cheater_who_spares_them_as_it_was() -> None:
    """A cheater sees which of its tasks are decoys (only checks are as small) and can leave them
    alone: the shards' checks must still reach the target, so m is what it is without decoys."""
    d, m = decoy_plan(VerificationSpec(decoys=1), 24, 4096)
    without = VerificationPolicy(VerificationSpec(decoys=0), 24, 4096)
    with_decoys = VerificationPolicy(VerificationSpec(spot_rows=m), 24 + d, 4096, decoys=d)  # as planned
    assert with_decoys.sample_rows(1.0, 4096) == without.sample_rows(1.0, 4096) == m
    assert with_decoys.detection(1.0) == without.detection(1.0) >= 0.99
    assert with_decoys.worst_detection == without.worst_detection


def test_an_old_spec_keeps_its_bytes_and_decoys_are_a_bounded_policy_field() -> None:
    spec = InferenceSpec(model=MODEL, inputs=INPUTS, verification=VerificationSpec(), nonce="n")
    raw = canonical_json(spec)
    assert b"decoys" not in raw  # left out while None: specs signed before decoys keep their hash
    parsed = parse_spec(raw)
    assert isinstance(parsed, InferenceSpec) and parsed.verification is not None
    assert parsed.verification.decoy_ratio == 0.0 and canonical_json(parsed) == raw  # none unless asked for
    explicit = InferenceSpec(model=MODEL, inputs=INPUTS, verification=VerificationSpec(decoys=2), nonce="n")
    assert json.loads(canonical_json(explicit))["verification"]["decoys"] == 2
    for bad in (-1, 4.5, "1", True):
        data = json.loads(raw)
        data["verification"]["decoys"] = bad
        with pytest.raises(SpecError, match="decoys"):
            parse_spec(json.dumps(data).encode())


def test_the_fee_covers_checks_of_decoys_and_the_decoys_pay() -> None:
    rng = random.Random(3)
    for t, rows in ((24, 4096), (100, 1000), (5, 64)):
        v = VerificationSpec(decoys=1)
        d, m = decoy_plan(v, t, rows)
        fee = fee_tasks(v, t, rows)
        p = m / rows
        wins = [
            sum(rng.random() < p for _ in range(t + 2 * d)) + sum(rng.random() < v.canary_rate for _ in range(t + d))
            for _ in range(2000)
        ]  # checkers of T + D tasks and the D decoys, each a whole reward with probability m / rows
        assert sum(w > fee for w in wins) / len(wins) < 0.05, (t, rows, fee)


def test_a_checker_cannot_tell_a_check_by_its_size() -> None:
    """The attack: treat every m-row task as a check (a check's subject is someone else, so a
    lazy checker agrees without running it). Without decoys every m-row task is a check; with them
    a size rule is right only C/(C+D) of the time, and the lazy answers it gives decoys are caught
    by their own checks (a check of a decoy re-runs all of its m rows)."""
    rng = random.Random(11)
    t, rows = 24, 4096
    d, m = decoy_plan(VerificationSpec(decoys=1), t, rows)
    for rate, share in ((1.0, 2 / 3), (0.1, 1 / 6)):
        checks_seen = decoys_seen = caught = 0
        jobs = 400
        for _ in range(jobs):
            pieces = carve(t * rows, rows, d, m, rng.randrange)
            checks = sum(rng.random() < rate for _ in pieces)  # each task's result checked at `rate`
            sizes = [p.rows for p in pieces if p.decoy] + [m] * checks
            assert set(sizes) == {m}  # checks and decoys: one size, nothing to tell them apart by
            checks_seen, decoys_seen = checks_seen + checks, decoys_seen + d
            caught += any(rng.random() < rate for _ in range(d))  # a lazy answer to a decoy, checked
        precision = checks_seen / (checks_seen + decoys_seen)
        assert abs(precision - share) < 0.02, (rate, precision)
        assert caught / jobs >= 1 - (1 - rate) ** d - 0.03  # 92% per job even at the 10% floor


def _job(st: Store, shards: int, decoy_rows: int, n_decoys: int, shard_rows: int, budget_rewards: int) -> list[str]:
    """A priced job of `shards` shards and `n_decoys` decoys; the decoys' task ids."""
    job = new_job(JOB, reward_per_task_wei=REWARD)
    tasks = [NewTask(i, f"{i:064x}", BlobRef(INPUT, 0), shard_rows - decoy_rows) for i in range(shards)]
    tasks += [
        NewTask(shards + i, f"{shards + i:064x}", BlobRef(INPUT, 0), decoy_rows, decoy_unit_rows=shard_rows)
        for i in range(n_decoys)
    ]
    credits.set_job_price(st.engine, JOB, REWARD, budget_rewards * REWARD)
    st.jobs.create_job(job, tasks, NOW)
    return [t.task_id for t in tasks[shards:]]


def _run_all(st: Store) -> None:
    """SUBJECT leases and returns every task of the job (accepted unchecked: paid now)."""
    while True:
        leases, _ = st.tasks.lease_tasks(SUBJECT, 50, NOW, TIMING)
        if not leases:
            return
        items = [ResultItem(SUBJECT, receipt(x.task_id, x.attempt, job_id=JOB), BlobRef(OUT, 3), None) for x in leases]
        ResultAcceptance(st.engine).accept_results(items, NOW + 1)


def _credited(st: Store) -> dict[str, int]:
    c = s.credits
    with st.engine.connect() as conn:
        rows = conn.execute(select(c.c.task_id, c.c.amount_wei).where(c.c.job_id == JOB, ~c.c.void)).all()
    return {r.task_id: int(r.amount_wei) for r in rows}


def test_a_decoy_is_paid_by_rows_in_whole_rewards_drawn_once(state: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    shards, n, m, rows = 4, 400, 25, 100  # each decoy: one reward with probability 1/4
    decoy_ids = set(_job(state, shards, m, n, rows, budget_rewards=shards + n))
    monkeypatch.setattr(secrets, "randbelow", random.Random(5).randrange)
    _run_all(state)
    paid = _credited(state)
    won = [t for t in paid if t in decoy_ids]
    assert all(paid[t] == REWARD for t in paid)  # every credit a whole reward, as the chain charges
    assert len(paid) - len(won) == shards  # each shard paid once, whole
    assert abs(len(won) - n * m / rows) < 4 * (n * 0.25 * 0.75) ** 0.5  # expected pay ∝ rows
    with state.engine.connect() as conn:
        price = conn.execute(select(s.job_prices).where(s.job_prices.c.job_id == JOB)).one()
        earned = conn.execute(select(s.node_earnings.c.earned_wei)).scalar_one()
        assert int(price.credited_wei) == int(earned) == sum(paid.values())  # wei conserved
        assert decoys.decoy_pay(conn, JOB) == (n, n, len(won) * REWARD)
    # paying the same results again draws nothing new: a lost draw stays lost
    monkeypatch.setattr(secrets, "randbelow", lambda k: 0)  # a draw now would always win
    with state.engine.begin() as conn:
        credits.credit_results(conn, [(SUBJECT, JOB, t, 1) for t in sorted(decoy_ids)], NOW + 2)
    assert _credited(state) == paid


def test_decoy_wins_stop_at_the_funded_fee_and_never_take_a_shards_reward(
    state: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards, n = 3, 10
    _job(state, shards, 2, n, 100, budget_rewards=shards + 2)  # a fee of 2 rewards
    monkeypatch.setattr(secrets, "randbelow", lambda k: 0)  # every draw wins: a node farming decoys' luck
    _run_all(state)
    paid = _credited(state)
    assert sum(paid.values()) == (shards + 2) * REWARD  # the escrow, not a wei more
    assert all(f"{i:064x}" in paid for i in range(shards))  # every shard paid
    with state.engine.connect() as conn:
        assert decoys.fee_won(conn, JOB) == 2 == decoys.fee_funded(conn, JOB)[0]


def test_checking_a_decoy_whole_pays_its_checker_by_a_shards_rows(state: Store) -> None:
    """A check of a 10-row decoy re-runs all 10 rows; in a job of 400-row shards it wins with
    probability 10/400 (as a check of 10 rows of a shard does), not always."""
    check_id, checker = disputed(state, rows=10, sampled=tuple(range(10)))
    with state.engine.begin() as conn:
        conn.execute(
            s.decoys.insert().values(
                task_id=task_id_for(CHECKED_JOB, 0),
                job_id=CHECKED_JOB,
                rows=10,
                unit_rows=400,
                drawn_attempt=-1,
                won=False,
            )
        )
        asked: list[int] = []
        assert fees.pay_checkers(conn, check_id, [checker], NOW, draw=lambda n: asked.append(n) or 10) == 0
        assert asked == [400]  # drawn over a shard's rows, not the decoy's 10
        assert fees.pay_checkers(conn, check_id, [checker], NOW, draw=lambda n: 9) == 1
