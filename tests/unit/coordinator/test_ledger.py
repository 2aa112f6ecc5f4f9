"""The ledger on SQLite and PostgreSQL: exact wei, credits → epochs → charges and proofs, the outbox queue."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, select
from sqlalchemy.exc import StatementError

from coordinator.db import schema as s
from coordinator.db.engine import make_engine
from coordinator.db.wei import Wei
from coordinator.repositories.ledger import outbox as ob
from coordinator.repositories.ledger.listener import LedgerListener
from coordinator.repositories.ledger.outbox import enqueue
from coordinator.repositories.store import Store
from coordinator.services import outbox as worker
from coordinator.services.acceptance import ResultAcceptance
from coordinator.services.ledger import Ledger
from tensorgrid.chain import ContractReverted, verify_proof
from tensorgrid.crypto import normalize_address
from tensorgrid.types import BlobRef
from tests.unit.coordinator.test_storage import CPU, JOB, SUBMITTER, TIMING, add_nodes, make_job, receipt

N1, N2, N3 = (normalize_address("0x" + d * 20) for d in ("a1", "b2", "c3"))
J1, J2 = "11" * 32, "22" * 32
BIG = 2**200 + 7  # far past float and int64 precision


@pytest.fixture
def ledger(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    yield Ledger(engine)
    engine.dispose()


def outbox_rows(ledger: Ledger) -> list[ob.OutboxItem]:
    with ledger.engine.connect() as conn:
        return ob.items(conn)


def confirm(ledger: Ledger, key: str) -> None:
    """What the outbox does when the post's receipt has status 1."""
    with ledger.engine.begin() as conn:
        item = ob.get_item(conn, key)
        assert item is not None
        conn.execute(s.outbox.update().where(s.outbox.c.id == item.id).values(state="confirmed"))
        LedgerListener().on_confirmed(conn, item, 1)


def fail(ledger: Ledger, key: str, error: ContractReverted) -> bool:
    """What the outbox does when the post reverts."""
    with ledger.engine.begin() as conn:
        item = ob.get_item(conn, key)
        assert item is not None
        conn.execute(s.outbox.update().where(s.outbox.c.id == item.id).values(state="failed", blocking=True))
        resolved = LedgerListener().on_failed(conn, item, error, 1)
        if resolved:
            ob.unblock(conn, item.id, 1)
        return resolved


def test_wei_round_trips_exactly(db_url: str) -> None:
    engine = make_engine(db_url)
    md = MetaData()
    t = Table("wei_probe", md, Column("id", Integer, primary_key=True), Column("v", Wei))
    md.create_all(engine)
    values = [0, 1, 2**53 + 1, 2**64, BIG, 10**77, 2**256 - 2, 2**256 - 1]
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": i, "v": v} for i, v in enumerate(values)] + [{"id": 99, "v": None}])
    with engine.connect() as conn:
        got = dict(conn.execute(select(t.c.id, t.c.v)).all())
    assert [got[i] for i in range(len(values))] == values and got[99] is None
    assert all(type(got[i]) is int for i in range(len(values)))
    for bad in (-1, 2**256, 1.5, True, "5"):
        with pytest.raises(StatementError), engine.begin() as conn:
            conn.execute(t.insert().values(id=100, v=bad))
    engine.dispose()


def test_credits_epochs_charges_and_proofs(ledger: Ledger) -> None:
    ledger.set_job_price(J1, BIG, BIG * 10)
    ledger.set_job_price(J2, 3, 1000)
    assert ledger.post_epoch(1) is None  # nothing to charge
    credited = ledger.credit_results(
        [(N1, J1, "t1", 1), (N2, J1, "t2", 1), (N1, J2, "t3", 1), (N3, "ff" * 32, "t4", 1)],
        5,  # last: unpriced
    )
    assert credited == 2 * BIG + 3
    assert ledger.credit_results([(N1, J1, "t1", 1)], 6) == 0  # the same (task, attempt) again
    assert ledger.earnings(N1) == {"cumulative_wei": BIG + 3, "claimable": None, "pending_wei": BIG + 3}

    assert ledger.post_epoch(10) == 1
    (item,) = outbox_rows(ledger)
    assert (item.key, item.action, item.state) == ("post_root:1", "post_root", "pending")
    assert item.payload["epoch"] == 1
    assert item.payload["charges"] == [[J1, str(2 * BIG)], [J2, "3"]]
    assert ledger.post_epoch(11) is None
    assert ledger.earnings(N1)["claimable"] is None  # posted, not confirmed yet

    confirm(ledger, "post_root:1")
    e1 = ledger.earnings(N1)
    assert e1["claimable"] is not None and e1["claimable"]["epoch"] == 1
    assert e1["claimable"]["cumulative_wei"] == BIG + 3 and e1["pending_wei"] == 0
    root1 = bytes.fromhex(item.payload["root"])
    proof = [bytes.fromhex(p[2:]) for p in e1["claimable"]["proof"]]
    assert verify_proof(root1, N1, BIG + 3, proof)

    # Epoch 2 carries cumulative amounts: N2 earns again, N1 keeps its old total in the tree.
    ledger.credit_results([(N2, J1, "t5", 1)], 20)
    assert ledger.post_epoch(21) == 2
    confirm(ledger, "post_root:2")
    p2 = outbox_rows(ledger)[-1].payload
    assert p2["charges"] == [[J1, str(BIG)]]
    for node, total in ((N1, BIG + 3), (N2, 2 * BIG)):
        e = ledger.earnings(node)
        assert e["claimable"] is not None and e["claimable"]["epoch"] == 2 and e["cumulative_wei"] == total
        proof = [bytes.fromhex(p[2:]) for p in e["claimable"]["proof"]]
        assert verify_proof(bytes.fromhex(p2["root"]), node, total, proof)
    assert ledger.earnings(N3) == {"cumulative_wei": 0, "claimable": None, "pending_wei": 0}


def test_credits_stop_at_the_budget(ledger: Ledger) -> None:
    ledger.set_job_price(J1, 40, 100)
    assert ledger.credit_results([(N1, J1, f"t{i}", 1) for i in range(4)], 1) == 80
    assert ledger.earnings(N1)["cumulative_wei"] == 80
    with pytest.raises(ValueError, match="below"):
        ledger.set_job_price(J1, 40, 50)


def test_enqueue_is_idempotent(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        assert enqueue(conn, "record_result:x", "record_result", {"job_id": J1, "result_hash": "ab" * 32}, 1)
        assert not enqueue(conn, "record_result:x", "record_result", {"job_id": J2, "result_hash": "cd" * 32}, 2)
        with pytest.raises(ValueError, match="unknown outbox action"):
            enqueue(conn, "k", "selfdestruct", {}, 3)
    (item,) = outbox_rows(ledger)
    assert item.payload["job_id"] == J1


def test_job_finished_charges_before_recording(ledger: Ledger) -> None:
    ledger.set_job_price(J1, 5, 100)
    ledger.credit_results([(N1, J1, "t1", 1)], 1)
    assert ledger.job_finished(J1, "ab" * 32, 2)
    assert ledger.job_finished(J1, "ab" * 32, 3)  # idempotent
    assert [(i.key, i.action) for i in outbox_rows(ledger)] == [
        ("post_root:1", "post_root"),
        (f"record_result:{J1}", "record_result"),
    ]
    assert not ledger.job_finished(J2, "cd" * 32, 4)  # unpriced: no chain record


def test_a_cancelled_locked_job_is_charged_for_its_work_then_released(db_url: str) -> None:
    """No free work (was: a cancelled job's credits were voided). Once a task was leased the
    escrow is locked; the submitter's cancel ends the job, its credits are charged in an epoch,
    and only then is the rest of the escrow released to the submitter."""
    state = Store(db_url)
    try:
        node = "0x" + "aa" * 20
        add_nodes(state, (node, CPU))
        make_job(state, n=3)
        ledger = Ledger(state.engine)
        ledger.set_job_price(JOB, 5, 15)
        leases, _ = state.tasks.lease_tasks(node, 2, 10, TIMING)  # the first lease queues the lock
        for lz in leases:
            ResultAcceptance(state.engine).accept_result(node, receipt(lz.task_id, 1), BlobRef("ff" * 32, 3), None, 20)
        assert ledger.result_withheld(JOB)  # the lock is not on chain yet
        state.jobs.cancel_job(JOB, SUBMITTER, 30)
        assert ledger.close_ended_jobs(40) == 1 and ledger.close_ended_jobs(41) == 0
        items = outbox_rows(ledger)
        assert [(i.key, i.action) for i in items] == [
            (f"lock_job:{JOB}", "lock_job"),
            ("post_root:1", "post_root"),
            (f"release_job:{JOB}", "release_job"),
        ]
        assert items[1].payload["charges"] == [[JOB, "10"]] and items[1].payload["tasks"] == [[JOB, 2]]
        assert ledger.earnings(node)["cumulative_wei"] == 10  # nothing voided: the node is paid
    finally:
        state.close()


def test_a_charge_the_escrow_refuses_voids_that_job_and_reposts_the_epoch(ledger: Ledger) -> None:
    """Defensive: the ledger priced J1 above its escrow. (A cancel cannot cause this once the
    escrow is locked; see test_a_cancelled_locked_job_is_charged_for_its_work_then_released.)"""
    ledger.set_job_price(J1, 5, 100)
    ledger.set_job_price(J2, 7, 100)
    ledger.credit_results([(N1, J1, "t1", 1), (N2, J2, "t2", 1)], 1)
    assert ledger.job_finished(J2, "cd" * 32, 2)  # epoch 1, then record_result for J2
    error = ContractReverted("OverBudget", (bytes.fromhex(J1), 5, 0), "postRoot reverted: OverBudget")
    assert fail(ledger, "post_root:1", error)
    rows = outbox_rows(ledger)
    live = [(i.key, i.state) for i in rows if "!" not in i.key]
    assert live == [("post_root:1", "pending"), (f"record_result:{J2}", "pending")]
    assert sorted(i.state for i in rows if "!" in i.key) == ["cancelled", "failed"]
    repost = [i for i in rows if i.key == "post_root:1"][0]
    assert repost.payload["charges"] == [[J2, "7"]]  # J1's credits are void, the epoch number is reused
    assert ledger.earnings(N1)["cumulative_wei"] == 0 and ledger.earnings(N2)["cumulative_wei"] == 7
    assert ledger.credit_results([(N1, J1, "t3", 1)], 3) == 0  # a void job earns no more
    assert ledger.status()["failed_epoch"] is None


def test_an_unexplained_revert_halts_epochs_until_resolved(ledger: Ledger) -> None:
    ledger.set_job_price(J1, 5, 100)
    ledger.credit_results([(N1, J1, "t1", 1)], 1)
    assert ledger.post_epoch(2) == 1
    assert not fail(ledger, "post_root:1", ContractReverted("WrongEpoch", (1, 2), "postRoot reverted: WrongEpoch"))
    ledger.credit_results([(N1, J1, "t2", 1)], 3)
    assert ledger.post_epoch(4) is None
    st = ledger.status()
    assert st["failed_epoch"]["epoch"] == 1 and st["blocked_by"]["key"] == "post_root:1"
    assert ledger.resolve_failed_epoch(1, 5) == 1
    repost = [i for i in outbox_rows(ledger) if i.key == "post_root:1"][0]
    assert repost.state == "pending" and repost.payload["charges"] == [[J1, "10"]]
    assert ledger.status()["blocked_by"] is None


def test_accepted_results_are_credited_in_the_same_transaction(db_url: str) -> None:
    state = Store(db_url)
    try:
        add_nodes(state, ("0x" + "aa" * 20, CPU))
        make_job(state, n=2)
        Ledger(state.engine).set_job_price(JOB, 10**18, 5 * 10**18)
        leases, _ = state.tasks.lease_tasks("0x" + "aa" * 20, 5, 10, TIMING)
        for lz in leases:
            ResultAcceptance(state.engine).accept_result(
                "0x" + "aa" * 20, receipt(lz.task_id, 1), BlobRef("ff" * 32, 3), None, 20
            )
        assert Ledger(state.engine).earnings("0x" + "aa" * 20)["cumulative_wei"] == 2 * 10**18
    finally:
        state.close()


def test_the_worker_sends_every_action_the_queue_takes() -> None:
    assert set(worker.ACTIONS) == ob.ACTIONS
