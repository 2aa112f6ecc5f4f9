"""Piggybacked leasing: a result that asks for its node's next tasks gets them in the transaction
that accepts it, answered exactly as LeaseTasks would answer at that moment (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update

from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig, LeaseTiming
from coordinator.db import schema as s
from coordinator.errors import Rejected
from coordinator.repositories.leasing import Barred
from coordinator.repositories.store import Store
from coordinator.services.acceptance import ResultAcceptance, ResultItem
from coordinator.services.scheduler import LeaseOutcome
from tensorgrid.crypto import Signer, sign_receipt
from tensorgrid.spec import NoopSpec, canonical_json, job_id_for, spec_hash
from tensorgrid.types import BlobRef, Capabilities, Lease, Receipt
from tests.unit.coordinator.test_storage import CPU, GPU, JOB, make_job

A = "0x" + "aa" * 20
B = "0x" + "bb" * 20
JOB2 = "cd" * 32
TIMING = LeaseTiming(ttl_ms=1000, grace_ms=500)
NOW = 100
OUT = BlobRef("ff" * 32, 3)


@pytest.fixture
def state(db_url: str):  # type: ignore[no-untyped-def]
    st = Store(db_url)
    yield st
    st.close()


def register(state: Store, *nodes: tuple[str, Capabilities]) -> None:
    for i, (addr, caps) in enumerate(nodes):
        state.nodes.register_node(addr, caps, f"{i:064x}", 0, 10**9, f"nonce-{addr}")


def result(node: str, lease: Lease, want: int, job_id: str = JOB) -> ResultItem:
    return ResultItem(node, Receipt(job_id, lease.task_id, lease.attempt, "ee" * 32, OUT.sha256, signature=b"s"),
                      OUT, None, want=want)  # fmt: skip


def submit(
    state: Store, items: list[ResultItem], now: int = NOW, barred: Barred | None = None
) -> tuple[list[object], list[LeaseOutcome | None]]:
    def lease_in(conn, requests, now_ms):  # type: ignore[no-untyped-def]
        return state.tasks.lease_in(conn, requests, now_ms, TIMING, barred)

    outcomes, leases = ResultAcceptance(state.engine).accept_and_lease(items, now, lease_in)
    return list(outcomes), leases


def lease_tasks(state: Store, node: str, now: int = NOW, barred: Barred | None = None) -> LeaseOutcome:
    """What LeaseTasks would answer now."""
    (answer,) = state.tasks.lease_many([(node, 1)], now, TIMING, barred)
    return answer


def test_an_accepted_result_brings_its_nodes_next_leases(state: Store) -> None:
    register(state, (A, CPU))
    make_job(state, n=4)
    (first,), _ = state.tasks.lease_tasks(A, 1, 10, TIMING)
    outcomes, (answer,) = submit(state, [result(A, first, want=2)])
    assert outcomes == [(JOB, False)]
    assert isinstance(answer, tuple)
    leases, retry = answer
    assert retry == 0 and len(leases) == 2 and first.task_id not in {x.task_id for x in leases}
    for x in leases:  # leased as LeaseTasks leases: to the node, first attempt, deadline from now
        task = state.tasks.get_task(x.task_id)
        assert (task.state, task.node, task.attempt, task.deadline_ms) == ("leased", A, 1, NOW + TIMING.ttl_ms)
        assert (x.attempt, x.deadline_ms) == (1, NOW + TIMING.ttl_ms)


def test_a_refused_result_brings_no_leases(state: Store) -> None:
    register(state, (A, CPU), (B, CPU))
    make_job(state, n=3)
    (mine,), _ = state.tasks.lease_tasks(A, 1, 10, TIMING)
    outcomes, leases = submit(state, [result(B, mine, want=1), result(A, mine, want=0)])
    assert isinstance(outcomes[0], Rejected) and outcomes[1] == (JOB, False)
    assert leases == [None, None]  # refused: not tried (its sender backs off once the refusal is counted)
    assert state.tasks.get_task(mine.task_id).state == "done"


def test_a_draining_node_gets_what_lease_tasks_answers(state: Store) -> None:
    register(state, (A, CPU))
    make_job(state, n=3)
    (held,), _ = state.tasks.lease_tasks(A, 1, 10, TIMING)
    state.tasks.heartbeat(A, [(held.task_id, held.attempt)], True, 20, TIMING)
    _, (answer,) = submit(state, [result(A, held, want=1)])
    assert answer == ([], 1000) == lease_tasks(state, A)


def test_an_unknown_node_is_leased_nothing_as_by_lease_tasks(state: Store) -> None:
    # A lease names a registered node (a foreign key), so only a stranger's result can ask.
    register(state, (A, CPU))
    make_job(state, n=3)
    (held,), _ = state.tasks.lease_tasks(A, 1, 10, TIMING)
    outcomes, (answer,) = submit(state, [result(B, held, want=1)])
    assert isinstance(outcomes[0], Rejected) and answer is None
    refused = lease_tasks(state, B)
    assert isinstance(refused, Rejected) and "unknown node" in str(refused)
    assert state.tasks.get_task(held.task_id).node == A


def test_backoff_is_cleared_by_an_accepted_result_as_before_a_lease_call(state: Store) -> None:
    register(state, (A, CPU), (B, CPU))
    make_job(state, n=4)
    (held,), _ = state.tasks.lease_tasks(A, 1, 10, TIMING)
    (other,), _ = state.tasks.lease_tasks(B, 1, 10, TIMING)
    with state.engine.begin() as conn:
        for node in (A, B):
            conn.execute(update(s.nodes).where(s.nodes.c.address == node).values(backoff_until_ms=NOW + 5000))
    _, (answer,) = submit(state, [result(A, held, want=1)])
    assert isinstance(answer, tuple) and len(answer[0]) == 1  # accepting resets the node's failure streak
    answer_b = lease_tasks(state, B)  # a node that has not delivered still backs off
    assert answer_b == ([], 5000)
    state.tasks.reject_task_result(B, other.task_id, other.attempt, "bad bytes", NOW)
    _, (refused,) = submit(state, [result(B, other, want=1)], now=NOW + 1)
    assert refused is None  # its lease is over: no result, no leases


def test_capabilities_and_stake_bars_hold_for_piggybacked_leases(state: Store) -> None:
    register(state, (A, CPU), (B, GPU))
    make_job(state, n=2)
    make_job(state, n=2, job_id=JOB2, device="cuda")
    (held,), _ = state.tasks.lease_tasks(A, 1, 10, TIMING)
    _, (answer,) = submit(state, [result(A, held, want=5)])
    assert isinstance(answer, tuple)
    (last,) = answer[0]
    assert last.job_id == JOB  # a CPU node never gets a CUDA-only task
    _, (answer,) = submit(state, [result(A, last, want=5)], now=NOW + 1)
    assert answer == ([], 500) == lease_tasks(state, A, now=NOW + 1)

    (gpu_held,), _ = state.tasks.lease_tasks(B, 1, NOW, TIMING)
    bar: Barred = lambda conn, node: {JOB2}  # noqa: E731 - e.g. too little stake for it
    _, (answer,) = submit(state, [result(B, gpu_held, want=5, job_id=JOB2)], now=NOW + 2, barred=bar)
    assert answer == ([], 500) == lease_tasks(state, B, now=NOW + 2, barred=bar)
    leases, _ = lease_tasks(state, B, now=NOW + 2)  # type: ignore[misc]
    assert [x.job_id for x in leases] == [JOB2]


OUTPUT = b"done"
SUBMITTER = "0x" + "11" * 20


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def test_the_service_remembers_piggybacked_leases_and_answers_refusals_with_none(db_url: str, tmp_path: Path) -> None:
    app = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", database_url=db_url))
    node = Signer.generate()
    app.store.nodes.register_node(node.address, CPU, "0" * 64, app.runtime.now_ms(), 10**9, "n")
    raw = canonical_json(NoopSpec(tasks=3))
    job_id = job_id_for(SUBMITTER, spec_hash(raw))
    job, tasks = app.intake.plan(raw, SUBMITTER, spec_hash(raw), job_id)
    app.store.jobs.create_job(job, tasks, app.runtime.now_ms())

    def signed(lease: Lease) -> Receipt:
        r = Receipt(lease.job_id, lease.task_id, lease.attempt, lease.input.sha256, hashlib.sha256(OUTPUT).hexdigest())
        return sign_receipt(node, app.domain, r)

    async def scenario() -> None:
        (first,), _ = await app.scheduler.lease(node.address, 1, 0)
        accepted = await app.acceptance.submit(node.address, signed(first), len(OUTPUT), body(OUTPUT), want=1)
        assert accepted.leases is not None
        (second,), retry = accepted.leases
        assert retry == 0 and app.scheduler.lease_book[second.task_id].node == node.address
        with pytest.raises(Rejected):  # the same result again: refused before any leasing
            await app.acceptance.submit(node.address, signed(first), len(OUTPUT), body(OUTPUT), want=1)
        await app.stop()

    asyncio.run(scenario())
