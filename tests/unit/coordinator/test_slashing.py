"""queue_slash and the slash listener on SQLite and PostgreSQL: what is queued, what is refused, what is recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import func, insert, select

from coordinator.db import schema as s
from coordinator.kinds.noop import NoopKind
from coordinator.kinds.registry import Registry
from coordinator.repositories.jobs import NewTask
from coordinator.repositories.ledger import outbox as ob
from coordinator.repositories.ledger import slashing
from coordinator.repositories.ledger.listener import LedgerListener
from coordinator.repositories.ledger.slashing import queue_slash
from coordinator.repositories.store import Store
from coordinator.services.ledger import Ledger
from coordinator.services.report import Reports
from tensorgrid.chain import ContractReverted
from tensorgrid.crypto import normalize_address
from tensorgrid.spec import task_id_for
from tensorgrid.types import BlobRef, Capabilities
from tests.jobs import new_job

NODE = normalize_address("0x" + "a1" * 20)
OTHER = normalize_address("0x" + "b2" * 20)
SUBMITTER = normalize_address("0x" + "5b" * 20)
JOB, FREE = "ab" * 32, "cd" * 32
REWARD = 3 * 10**15
STAKE = 2**70 + 3  # exact past float precision
SIGNED_OUTPUT, CORRECT = "0f" * 32, "c0" * 32
TASK = task_id_for(JOB, 0)
CPU = Capabilities(device_kind="cpu", memory_bytes=1 << 30, cpu_cores=1)


@pytest.fixture
def state(db_url: str) -> Iterator[Store]:
    st = Store(db_url)
    yield st
    st.close()


def add_job(state: Store, job_id: str = JOB, stake: int = 0, tasks: int = 2) -> None:
    policy = json.dumps({"mode": "spotcheck"}) if stake else ""
    job = new_job(job_id, submitter=SUBMITTER, spec_hash="ee" * 32, verification_json=policy, required_stake_wei=stake)
    state.jobs.create_job(job, [NewTask(i, task_id_for(job_id, i), BlobRef("ee" * 32, 0), 1) for i in range(tasks)], 1)


def store_receipt(state: Store, task_id: str = TASK, attempt: int = 1, node: str = NODE) -> None:
    """What accepting a result stores: the node's receipt as signed (fields and signature)."""
    with state.engine.begin() as conn:
        conn.execute(
            insert(s.receipts).values(
                task_id=task_id,
                attempt=attempt,
                node=node,
                input_hash="1e" * 32,
                output_hash=SIGNED_OUTPUT,
                commitment="c0" * 16 + "00" * 16,
                signature=bytes(range(65)),
                received_ms=5,
            )
        )


def queue(state: Store, **overrides: object) -> bool:
    args: dict[str, object] = dict(
        node=NODE, job_id=JOB, task_id=TASK, attempt=1, correct_output_sha=CORRECT, now_ms=10
    )
    args.update(overrides)
    with state.engine.begin() as conn:
        return queue_slash(conn, **args)  # type: ignore[arg-type]


def outbox_items(state: Store) -> list[ob.OutboxItem]:
    with state.engine.connect() as conn:
        return ob.items(conn)


def slash_rows(state: Store) -> list[dict[str, object]]:
    with state.engine.connect() as conn:
        return slashing.slashes(conn)


def test_a_slash_carries_the_receipt_as_signed_and_is_queued_once(state: Store) -> None:
    add_job(state)
    Ledger(state.engine).set_job_price(JOB, REWARD, REWARD * 2)
    store_receipt(state)
    assert queue(state)
    assert queue(state, now_ms=11)  # the same evidence again: already queued, nothing new
    (item,) = outbox_items(state)
    assert item.key == f"slash:{TASK}:1" and item.action == "slash" and item.state == "pending"
    assert item.payload == {
        "node": NODE,
        "receipt": {
            "job_id": JOB,
            "task_id": TASK,
            "attempt": 1,
            "input_hash": "1e" * 32,
            "output_hash": SIGNED_OUTPUT,
            "commitment": "c0" * 16 + "00" * 16,
        },
        "signature": bytes(range(65)).hex(),
        "amount": str(REWARD * slashing.FALLBACK_REWARD_MULTIPLE),  # no policy stake: 10 rewards
        "correct_output_hash": CORRECT,
        "beneficiary": SUBMITTER,  # the party harmed
    }
    (row,) = slash_rows(state)
    assert row["state"] == "queued" and row["amount_wei"] == REWARD * 10 and row["node"] == NODE
    assert row["taken_wei"] is None and row["beneficiary"] == SUBMITTER


def test_the_amount_is_the_policys_required_stake(state: Store) -> None:
    add_job(state, stake=STAKE)
    Ledger(state.engine).set_job_price(JOB, REWARD, REWARD * 2)
    store_receipt(state)
    assert queue(state, correct_output_sha="0x" + CORRECT.upper())  # 0x and case do not matter
    (item,) = outbox_items(state)
    assert item.payload["amount"] == str(STAKE) and item.payload["correct_output_hash"] == CORRECT
    assert slash_rows(state)[0]["amount_wei"] == STAKE


def test_nothing_is_queued_without_evidence_or_an_escrow(state: Store) -> None:
    add_job(state)
    add_job(state, job_id=FREE)
    store_receipt(state)
    store_receipt(state, task_id=task_id_for(FREE, 0))
    assert not queue(state)  # the job has no price: no chain, or never escrowed
    Ledger(state.engine).set_job_price(JOB, REWARD, REWARD * 2)
    assert not queue(state, attempt=2)  # no receipt stored for that attempt
    assert not queue(state, task_id=task_id_for(JOB, 1))  # nor for that task
    assert not queue(state, correct_output_sha=SIGNED_OUTPUT)  # the node signed the right answer
    assert not queue(state, node=OTHER)  # the receipt is someone else's
    assert not queue(state, correct_output_sha="not a hash")
    Ledger(state.engine).set_job_price(FREE, REWARD, REWARD)
    assert not queue(state, job_id=FREE)  # JOB's task: its receipt was signed for JOB, not FREE
    Ledger(state.engine).set_job_price(FREE, 0, REWARD)
    assert not queue(state, job_id=FREE, task_id=task_id_for(FREE, 0))  # free job: nothing to take
    assert outbox_items(state) == [] and slash_rows(state) == []


def confirm(state: Store, key: str) -> None:
    with state.engine.begin() as conn:
        item = ob.get_item(conn, key)
        assert item is not None
        LedgerListener().on_confirmed(conn, item, 50)


def propose_and_execute(state: Store, attempt: int = 1) -> None:
    """The proposal confirmed, its delay over (no chain here: no delay), its execution confirmed."""
    confirm(state, f"slash:{TASK}:{attempt}")
    assert [r["state"] for r in slash_rows(state) if r["attempt"] == attempt] == ["proposed"]
    assert Ledger(state.engine).execute_due_slashes(49) == 0  # executable from 50 ms on
    assert Ledger(state.engine).execute_due_slashes(55) == 1
    assert Ledger(state.engine).execute_due_slashes(56) == 0  # queued once
    confirm(state, f"execute_slash:{TASK}:{attempt}")


def fail(state: Store, key: str, error: ContractReverted) -> bool:
    with state.engine.begin() as conn:
        item = ob.get_item(conn, key)
        assert item is not None
        return LedgerListener().on_failed(conn, item, error, 60)


def test_confirmed_and_failed_slashes_are_recorded(state: Store) -> None:
    add_job(state)
    Ledger(state.engine).set_job_price(JOB, REWARD, REWARD * 2)
    store_receipt(state, attempt=1)
    store_receipt(state, attempt=2)
    assert queue(state, attempt=1) and queue(state, attempt=2)
    propose_and_execute(state, 1)
    again = ContractReverted("EvidenceAlreadyUsed", (bytes.fromhex(TASK), 2), "slash reverted: EvidenceAlreadyUsed")
    assert fail(state, f"slash:{TASK}:2", again)  # resolved: never blocks the queue
    first, second = slash_rows(state)
    assert first["state"] == "confirmed" and first["updated_ms"] == 50
    assert second["state"] == "failed" and second["error"] == f"EvidenceAlreadyUsed(0x{TASK}, 2)"
    events = state.jobs.events_after(JOB, 0)
    assert events[-1].kind == "slashed" and events[-1].node == NODE and str(REWARD * 10) in events[-1].message
    assert [e.kind for e in events].count("slashed") == 1
    # Only the confirmed slash counts against the node.
    with state.engine.connect() as conn:
        assert slashing.slashed_by_node(conn) == {NODE: REWARD * 10}
        assert slashing.job_slashes(conn, JOB) == (1, REWARD * 10)
    assert Ledger(state.engine).slashed_wei(NODE.lower()) == REWARD * 10


def test_node_list_and_job_report_show_slashes(state: Store) -> None:
    state.nodes.register_node(NODE, CPU, "00" * 32, 0, 10**9, "n1")
    add_job(state, stake=STAKE)
    Ledger(state.engine).set_job_price(JOB, REWARD, REWARD * 2)
    store_receipt(state)
    assert queue(state)
    assert state.nodes.list_nodes()[0].slashed_wei == 0  # queued is not taken
    confirm(state, f"slash:{TASK}:1")
    assert state.nodes.list_nodes()[0].slashed_wei == 0  # proposed is not taken: the guardian may veto it
    assert Ledger(state.engine).execute_due_slashes(60) == 1
    confirm(state, f"execute_slash:{TASK}:1")
    assert state.nodes.list_nodes()[0].slashed_wei == STAKE
    assert state.nodes.get_node(NODE).slashed_wei == STAKE  # type: ignore[union-attr]
    report = Reports(state, Registry([NoopKind()])).with_verification(state.jobs.get_job(JOB)).verification
    assert report is not None
    assert (report.mode, report.required_stake_wei, report.slashes, report.slashed_wei) == (
        "spotcheck",
        STAKE,
        1,
        STAKE,
    )
    assert report.checks == {} and report.detection == 0.0  # a noop spec: no odds to model


def test_job_report_without_a_policy(state: Store) -> None:
    add_job(state)
    report = Reports(state, Registry([NoopKind()])).with_verification(state.jobs.get_job(JOB)).verification
    assert report is not None and report.mode == "none" and report.required_stake_wei == 0 and report.slashes == 0
    with state.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.slashes)).scalar_one() == 0


def test_a_vetoed_or_early_execution_is_recorded_and_never_blocks(state: Store) -> None:
    add_job(state)
    Ledger(state.engine).set_job_price(JOB, REWARD, REWARD * 2)
    store_receipt(state, attempt=1)
    assert queue(state, attempt=1)
    confirm(state, f"slash:{TASK}:1")
    assert Ledger(state.engine).execute_due_slashes(60) == 1
    early = ContractReverted("DelayNotOver", (b"\x01" * 32, 99), "executeSlash reverted: DelayNotOver")
    assert fail(state, f"execute_slash:{TASK}:1", early)  # chain time lags: queued again later
    assert slash_rows(state)[0]["state"] == "proposed"
    assert Ledger(state.engine).execute_due_slashes(70) == 0  # not hammered: tried again 5 s later
    assert Ledger(state.engine).execute_due_slashes(60 + 5000) == 1
    vetoed = ContractReverted("NotPending", (b"\x01" * 32, 2), "executeSlash reverted: NotPending")
    assert fail(state, f"execute_slash:{TASK}:1", vetoed)
    assert slash_rows(state)[0]["state"] == "vetoed"
    assert Ledger(state.engine).execute_due_slashes(10**9) == 0
    assert Ledger(state.engine).slashed_wei(NODE) == 0  # a vetoed slash takes nothing
