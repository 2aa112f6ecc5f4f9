"""Endpoint accounting on SQLite and PostgreSQL: served batches counted in memory, credited
once per batch in one transaction, capped by the budget, voided, and charged by epochs like
task credits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from coordinator.db import schema as s
from coordinator.repositories.ledger import credits as ledger_credits
from coordinator.repositories.ledger import epochs, escrow
from coordinator.repositories.store import Store
from coordinator.services.runtime import Runtime
from coordinator.services.serving.accounting import Accounting
from coordinator.services.serving.hooks import ServedBatch, ServedRequest
from tensorgrid.crypto import normalize_address
from tensorgrid.serving import batch_receipt
from tests.jobs import new_job

N1, N2 = (normalize_address("0x" + d * 20) for d in ("a1", "b2"))
SUBMITTER = normalize_address("0x" + "5b" * 20)
EP, FREE = "e1" * 32, "f2" * 32
R1, R2 = "01" * 32, "02" * 32  # replica ids
PRICE = 2**70 + 1  # wei per request, exact past float precision


@pytest.fixture
def state(db_url: str) -> Iterator[Store]:
    st = Store(db_url)
    yield st
    st.close()


def runtime() -> Runtime:
    return Runtime(inline_db=True, db_threads=1, work_threads=1)


def add_endpoint(state: Store, job_id: str = EP, price: int = PRICE, max_requests: int = 10) -> None:
    spec = {"kind": "endpoint", "model": {"sha256": "ab" * 32, "size": 1}, "max_requests": max_requests}
    job = new_job(
        job_id,
        submitter=SUBMITTER,
        kind="endpoint",
        spec_json=json.dumps(spec).encode(),
        spec_hash="ee" * 32,
        max_attempts=1,
        reward_per_task_wei=price,
    )
    state.jobs.create_job(job, [], 1)
    if price:
        ledger_credits.set_job_price(state.engine, job_id, price, price * max_requests)


def served(
    node: str, number: int, answered: int, failed: int = 0, replica: str = R1, endpoint: str = EP
) -> ServedBatch:
    """One micro-batch: `answered` ok requests then `failed` failed ones, with its receipt."""
    ids = list(range(number * 1000, number * 1000 + answered + failed))
    inputs = [f"in{i}".encode() for i in ids]
    outputs = [f"out{i}".encode() if k < answered else b"" for k, i in enumerate(ids)]
    receipt = batch_receipt(endpoint, replica, number, ids, inputs, outputs)
    requests = tuple(
        ServedRequest(i, inp, out, k < answered)
        for k, (i, inp, out) in enumerate(zip(ids, inputs, outputs, strict=True))
    )
    return ServedBatch(endpoint, replica, node, "cpu", number, receipt, requests)


def credit_rows(state: Store) -> list[tuple[str, str, int, int, bool]]:
    c = s.credits.c
    with state.engine.connect() as conn:
        rows = conn.execute(select(c.node, c.task_id, c.attempt, c.amount_wei, c.void).order_by(c.id)).all()
    return [(r.node, r.task_id, int(r.attempt), int(r.amount_wei), bool(r.void)) for r in rows]


def earned(state: Store, node: str) -> int:
    with state.engine.connect() as conn:
        value = conn.execute(select(s.node_earnings.c.earned_wei).where(s.node_earnings.c.node == node)).scalar()
    return int(value or 0)


def credited(state: Store, job_id: str = EP) -> int:
    with state.engine.connect() as conn:
        value = conn.execute(select(s.job_prices.c.credited_wei).where(s.job_prices.c.job_id == job_id)).scalar_one()
    return int(value)


def test_flush_pays_each_batch_once_and_only_once(state: Store) -> None:
    add_endpoint(state)
    acc = Accounting(runtime(), state.engine)
    b1, b2 = served(N1, 1, 3, failed=1), served(N2, 2, 2, replica=R2)
    for b in (b1, b2, b1):  # the same batch twice is counted once
        acc.record(b)
    assert acc.spent_wei(EP) == 5 * PRICE and acc.remaining(EP) == 5
    assert credit_rows(state) == []  # nothing written per request
    asyncio.run(acc.flush())
    assert credit_rows(state) == [
        (N1, b1.receipt.task_id, 0, 3 * PRICE, False),
        (N2, b2.receipt.task_id, 0, 2 * PRICE, False),
    ]
    assert (earned(state, N1), earned(state, N2), credited(state)) == (3 * PRICE, 2 * PRICE, 5 * PRICE)
    assert acc.spent_wei(EP) == 5 * PRICE and acc.remaining(EP) == 5

    # A batch recorded again after its flush, and a second accounting (a restarted
    # coordinator flushing what it had counted) pay nothing more.
    acc.record(b1)
    again = Accounting(runtime(), state.engine)
    again.record(b2)
    asyncio.run(acc.flush())
    asyncio.run(again.flush())
    assert len(credit_rows(state)) == 2 and credited(state) == 5 * PRICE and earned(state, N1) == 3 * PRICE
    assert again.spent_wei(EP) == 5 * PRICE


def test_budget_caps_the_credits_and_remaining(state: Store) -> None:
    add_endpoint(state, max_requests=10)
    acc = Accounting(runtime(), state.engine)
    acc.record(served(N1, 1, 4))
    assert acc.remaining(EP) == 6
    asyncio.run(acc.flush())
    assert acc.remaining(EP) == 6
    acc.record(served(N1, 2, 5))
    acc.record(served(N2, 3, 3, replica=R2))  # 8 counted, 6 fit: 5, then 1 of 3
    assert acc.remaining(EP) == 0
    asyncio.run(acc.flush())
    assert [r[3] for r in credit_rows(state)] == [4 * PRICE, 5 * PRICE, 1 * PRICE]
    assert credited(state) == 10 * PRICE and acc.remaining(EP) == 0 and acc.spent_wei(EP) == 10 * PRICE
    acc.record(served(N2, 4, 1, replica=R2))
    asyncio.run(acc.flush())
    assert len(credit_rows(state)) == 3 and credited(state) == 10 * PRICE


def test_a_free_endpoint_has_no_cap_or_its_own(state: Store) -> None:
    add_endpoint(state, FREE, price=0, max_requests=0)
    add_endpoint(state, "f3" * 32, price=0, max_requests=3)
    acc = Accounting(runtime(), state.engine)
    acc.record(served(N1, 1, 5, endpoint=FREE))
    acc.record(served(N1, 2, 2, endpoint="f3" * 32))
    assert acc.remaining(FREE) is None and acc.spent_wei(FREE) == 0
    assert acc.remaining("f3" * 32) == 1
    asyncio.run(acc.flush())
    assert credit_rows(state) == []


def test_void_before_and_after_the_flush(state: Store) -> None:
    add_endpoint(state)
    acc = Accounting(runtime(), state.engine)
    early, late, kept = served(N1, 1, 2), served(N1, 2, 3), served(N1, 3, 1)
    acc.record(early)
    acc.void(early, "caught")  # not written yet: dropped
    acc.record(late)
    acc.record(kept)
    assert acc.remaining(EP) == 6

    async def flush_then_void() -> None:
        await acc.flush()
        acc.void(late, "caught")  # written: its credit is taken back (in the background)
        for _ in range(50):
            await asyncio.sleep(0.01)
            if acc.spent_wei(EP) == PRICE:
                break

    asyncio.run(flush_then_void())
    assert credit_rows(state) == [
        (N1, late.receipt.task_id, 0, 3 * PRICE, True),
        (N1, kept.receipt.task_id, 0, PRICE, False),
    ]
    assert credited(state) == PRICE and earned(state, N1) == PRICE
    assert acc.spent_wei(EP) == PRICE and acc.remaining(EP) == 9
    acc.record(late)  # a voided batch is never paid again
    asyncio.run(acc.flush())
    assert credited(state) == PRICE


def test_a_void_during_the_flush_takes_the_credit_back_after_it(state: Store) -> None:
    add_endpoint(state)
    rt = runtime()
    acc = Accounting(rt, state.engine)
    batch = served(N1, 1, 2)
    acc.record(batch)
    real_write = acc._write

    def write_while_caught(tallies, now_ms):  # type: ignore[no-untyped-def]
        acc.void(batch, "caught mid-flush")  # the check lands while the transaction runs
        return real_write(tallies, now_ms)

    acc._write = write_while_caught  # type: ignore[method-assign]
    asyncio.run(acc.flush())
    assert credit_rows(state) == [(N1, batch.receipt.task_id, 0, 2 * PRICE, True)]
    assert credited(state) == 0 and earned(state, N1) == 0 and acc.spent_wei(EP) == 0


def test_endpoint_credits_are_charged_by_the_next_epoch_like_task_credits(state: Store) -> None:
    add_endpoint(state)
    acc = Accounting(runtime(), state.engine)
    acc.record(served(N1, 1, 3))
    acc.record(served(N2, 2, 2, replica=R2))
    with state.engine.begin() as conn:  # a batch job's task credit beside them
        ledger_credits.set_job_price(conn, "ab" * 32, 7, 70)
        ledger_credits.credit_results(conn, [(N1, "ab" * 32, "cd" * 32, 1)], 1)
    asyncio.run(acc.flush())
    with state.engine.begin() as conn:
        assert epochs.post_epoch(conn, 10) == 1
        leaves = dict(conn.execute(select(s.epoch_earnings.c.node, s.epoch_earnings.c.cumulative_wei)).all())
        payload = json.loads(conn.execute(select(s.outbox.c.payload)).scalar_one())
    assert {n: int(v) for n, v in leaves.items()} == {N1: 3 * PRICE + 7, N2: 2 * PRICE}
    # the chain charges a number of paid results at the job's reward: 5 requests, 1 task
    assert sorted(payload["tasks"]) == sorted([[EP, 5], ["ab" * 32, 1]])
    assert sorted(payload["charges"]) == sorted([[EP, str(5 * PRICE)], ["ab" * 32, "7"]])
    with state.engine.connect() as conn:
        assert conn.execute(select(s.credits.c.epoch).where(s.credits.c.job_id == EP)).scalars().all() == [1, 1]


def test_run_flushes_periodically_and_once_more_at_stop(state: Store) -> None:
    add_endpoint(state)
    acc = Accounting(runtime(), state.engine, flush_s=0.05)

    async def serve() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(acc.run(stop))
        acc.record(served(N1, 1, 1))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if credit_rows(state):
                break
        assert len(credit_rows(state)) == 1  # the periodic flush
        acc.record(served(N1, 2, 1))
        stop.set()
        await task

    asyncio.run(serve())
    assert len(credit_rows(state)) == 2  # the last one, at stop


def test_a_batch_receipted_after_the_escrow_release_is_queued_is_never_credited(state: Store) -> None:
    """A deleted endpoint's last batch: flushed before release_ended_jobs it is charged by the
    epoch that precedes the release; flushed after, it is not credited at all. Never a credit
    that the closed escrow would refuse and the ledger then void."""
    add_endpoint(state)
    state.jobs.start_job(EP, 1)  # running: its escrow lock is queued
    acc = Accounting(runtime(), state.engine)
    acc.record(served(N1, 1, 3))
    asyncio.run(acc.flush())  # the delete's flush
    state.jobs.cancel_job(EP, SUBMITTER, 2)
    acc.record(served(N1, 2, 2))  # in flight at the delete, flushed before the settlement timer
    asyncio.run(acc.flush())
    with state.engine.begin() as conn:
        assert escrow.release_ended_jobs(conn, 3) == 1
        payload = json.loads(
            conn.execute(select(s.outbox.c.payload).where(s.outbox.c.action == "post_root")).scalar_one()
        )
    assert payload["tasks"] == [[EP, 5]]  # both charged before the release
    acc.record(served(N1, 3, 4))  # receipted after the release was queued
    asyncio.run(acc.flush())
    assert [r[3] for r in credit_rows(state)] == [3 * PRICE, 2 * PRICE]  # not credited, nothing void
    assert credited(state) == earned(state, N1) == 5 * PRICE
    with state.engine.begin() as conn:
        assert epochs.post_epoch(conn, 4) is None  # nothing for a closed escrow to refuse
