"""The ledger's outbox against a real anvil: confirmations, reverts, crashes and a dead RPC."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from web3 import Web3

from coordinator.db.engine import make_engine
from coordinator.repositories.ledger import outbox as ob
from coordinator.repositories.ledger.listener import LedgerListener
from coordinator.services.ledger import Ledger
from coordinator.services.outbox import Outbox
from tensorgrid.chain import ChainClient, JobStatus
from tests.chain.conftest import ETH, Chain, new_id
from tests.chain.helpers import Crash, CrashAfterBroadcast, CrashBeforeBroadcast, open_job

REWARD = ETH // 100


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = make_engine(db_url)
    yield e
    e.dispose()


def make_outbox(ledger: Ledger, client: ChainClient, cls: type[Outbox] = Outbox) -> Outbox:
    return cls(ledger.engine, client, listener=LedgerListener(), backoff_ms=(50, 200))


def run_once(outbox: Outbox) -> int:
    """One pass, then let go of the worker lock, as a process that exits does."""
    try:
        return outbox.process_once()
    finally:
        outbox.close()


def rows(ledger: Ledger) -> list[ob.OutboxItem]:
    with ledger.engine.connect() as conn:
        return ob.items(conn)


def priced_job(chain: Chain, ledger: Ledger, tasks: int = 4, budget: int | None = None) -> str:
    job = new_id()
    open_job(chain.submitter, job, REWARD * tasks, reward=REWARD)
    ledger.set_job_price(job, REWARD, budget if budget is not None else REWARD * tasks)
    return job


def chain_nonce(chain: Chain) -> int:
    return chain.coordinator.pending_nonce()


def test_post_root_confirms_and_nodes_claim(chain: Chain, engine: Engine) -> None:
    ledger = Ledger(engine)
    outbox = ledger.outbox(chain.coordinator)
    job = priced_job(chain, ledger)
    n1, n2 = chain.nodes[0], chain.nodes[1]
    ledger.credit_results([(n1.address, job, "t1", 1), (n1.address, job, "t2", 1), (n2.address, job, "t3", 1)], 1)
    assert ledger.job_finished(job, "ee" * 32, 2)
    start = chain_nonce(chain)
    assert run_once(outbox) == 2
    assert [(i.key.split(":")[0], i.state, i.nonce) for i in rows(ledger)] == [
        ("post_root", "confirmed", start),
        ("record_result", "confirmed", start + 1),
    ]
    assert chain.coordinator.last_epoch() == 1 and chain_nonce(chain) == start + 2
    info = chain.admin.job(job)
    assert info.status == JobStatus.COMPLETED and info.charged == 3 * REWARD and info.result_hash == "ee" * 32

    chain.advance(700)  # past the challenge window
    earned = ledger.earnings(n1.address)
    assert earned["pending_wei"] == 0 and earned["claimable"] is not None
    claim = earned["claimable"]
    before = n1.balance()
    tx = n1.claim(claim["cumulative_wei"], [bytes.fromhex(p[2:]) for p in claim["proof"]])
    assert n1.balance() == before + 2 * REWARD - tx.fee


def test_a_revert_is_surfaced_and_the_next_epoch_goes_through(chain: Chain, engine: Engine) -> None:
    ledger = Ledger(engine)
    outbox = ledger.outbox(chain.coordinator)
    greedy = priced_job(chain, ledger, tasks=1, budget=REWARD * 5)  # the ledger thinks the escrow is bigger
    fine = priced_job(chain, ledger)
    node = chain.nodes[0].address
    ledger.credit_results([(node, greedy, "g1", 1), (node, greedy, "g2", 1), (node, fine, "f1", 1)], 1)
    assert ledger.post_epoch(2) == 1
    start = chain_nonce(chain)
    run_once(outbox)
    failed = [i for i in rows(ledger) if i.state == "failed"]
    assert len(failed) == 1 and "OverBudget" in failed[0].last_error and failed[0].nonce is None
    (redo,) = [i for i in rows(ledger) if i.key == "post_root:1"]
    assert redo.state == "confirmed" and redo.payload["charges"] == [[fine, str(REWARD)]]
    assert chain.coordinator.last_epoch() == 1 and chain_nonce(chain) == start + 1  # the estimate used no nonce
    assert ledger.earnings(node)["cumulative_wei"] == REWARD
    assert ledger.status()["blocked_by"] is None


@pytest.mark.parametrize("crash", [CrashBeforeBroadcast, CrashAfterBroadcast])
def test_a_restart_sends_each_tx_exactly_once(chain: Chain, engine: Engine, crash: type[Outbox]) -> None:
    ledger = Ledger(engine)
    job = priced_job(chain, ledger)
    ledger.credit_results([(chain.nodes[0].address, job, "t1", 1)], 1)
    ledger.job_finished(job, "ee" * 32, 2)
    start = chain_nonce(chain)
    with pytest.raises(Crash):
        run_once(make_outbox(ledger, chain.coordinator, crash))
    (sent, pending) = rows(ledger)
    assert sent.state == "sent" and sent.raw_tx and sent.nonce == start and pending.state == "pending"
    # A new coordinator process over the same database.
    assert run_once(make_outbox(ledger, chain.coordinator)) == 2
    done = rows(ledger)
    assert [i.state for i in done] == ["confirmed", "confirmed"] and done[0].tx_hash == sent.tx_hash
    assert [i.nonce for i in done] == [start, start + 1] and chain_nonce(chain) == start + 2
    assert chain.coordinator.last_epoch() == 1 and chain.admin.job(job).status == JobStatus.COMPLETED


def test_a_mined_revert_uses_its_nonce_and_is_unwound(chain: Chain, engine: Engine) -> None:
    ledger = Ledger(engine)
    doomed, fine = priced_job(chain, ledger), priced_job(chain, ledger)
    node = chain.nodes[0].address
    ledger.credit_results([(node, doomed, "d1", 1), (node, fine, "f1", 1)], 1)
    assert ledger.post_epoch(2) == 1
    start = chain_nonce(chain)
    with pytest.raises(Crash):
        run_once(make_outbox(ledger, chain.coordinator, CrashBeforeBroadcast))
    chain.submitter.cancel(doomed)  # the signed charge of `doomed` can no longer succeed
    run_once(make_outbox(ledger, chain.coordinator))
    items = rows(ledger)
    (failed,) = [i for i in items if i.state == "failed"]
    assert failed.nonce == start and "JobNotOpen" in failed.last_error
    (redo,) = [i for i in items if i.key == "post_root:1"]
    assert redo.state == "confirmed" and redo.nonce == start + 1 and redo.payload["charges"] == [[fine, str(REWARD)]]
    assert chain_nonce(chain) == start + 2 and chain.coordinator.last_epoch() == 1
    assert ledger.earnings(node)["cumulative_wei"] == REWARD


def test_rpc_down_retries_then_completes(chain: Chain, engine: Engine, unused_port: int) -> None:
    ledger = Ledger(engine)
    job = priced_job(chain, ledger)
    ledger.credit_results([(chain.nodes[0].address, job, "t1", 1)], 1)
    ledger.post_epoch(2)
    dead_w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{unused_port}", exception_retry_configuration=None))
    dead = ChainClient(dead_w3, chain.deployment, chain.keys[1])
    outbox = make_outbox(ledger, dead)
    assert run_once(outbox) == 0
    (item,) = rows(ledger)
    assert item.state == "pending" and item.attempts == 1 and item.last_error and item.next_try_ms > 0
    # Signed by a healthy process that then died; the dead RPC cannot broadcast it either.
    with engine.begin() as conn:
        conn.execute(ob.s.outbox.update().values(next_try_ms=0))
    with pytest.raises(Crash):
        run_once(make_outbox(ledger, chain.coordinator, CrashBeforeBroadcast))
    assert run_once(outbox) == 0
    (item,) = rows(ledger)
    assert item.state == "sent" and item.attempts == 2
    # backing off: a pass just before the retry time sends nothing (its clock pinned there, so a
    # loaded machine that takes longer than the backoff between two lines cannot pass it)
    early = Outbox(
        ledger.engine, chain.coordinator, listener=LedgerListener(), clock=lambda: (item.next_try_ms - 1) / 1000
    )
    assert run_once(early) == 0
    with engine.begin() as conn:
        conn.execute(ob.s.outbox.update().values(next_try_ms=0))
    assert run_once(make_outbox(ledger, chain.coordinator)) == 1
    assert rows(ledger)[0].state == "confirmed" and chain.coordinator.last_epoch() == 1


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_async_worker_runs_and_only_one_worker_owns_the_queue(chain: Chain, engine: Engine) -> None:
    ledger = Ledger(engine)
    job = priced_job(chain, ledger)
    ledger.credit_results([(chain.nodes[0].address, job, "t1", 1)], 1)
    ledger.job_finished(job, "ee" * 32, 2)
    first, second = ledger.outbox(chain.coordinator, poll_s=0.02), ledger.outbox(chain.coordinator)

    async def main() -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(first.run(stop))
        for _ in range(500):
            if all(i.state == "confirmed" for i in rows(ledger)):
                break
            await asyncio.sleep(0.02)
        if engine.dialect.name == "postgresql":
            ledger.post_epoch(3, force=True)
            assert second.process_once() == 0  # the running worker holds the lock
        stop.set()
        await worker

    asyncio.run(main())
    assert chain.admin.job(job).status == JobStatus.COMPLETED
    assert run_once(second) == (1 if engine.dialect.name == "postgresql" else 0)  # lock released on stop


def test_a_hung_worker_loses_the_queue_to_another_replica(chain: Chain, pg_url: str) -> None:
    # A replica that stops (SIGSTOP, a deadlock) keeps its database connection open; its lock
    # session must still end, or no other replica could ever post a root again.
    engine = make_engine(pg_url)
    ledger = Ledger(engine)
    hung, other = ledger.outbox(chain.coordinator, lock_idle_s=1.0), ledger.outbox(chain.coordinator, lock_idle_s=1.0)
    try:
        assert hung.process_once() == 0 and hung.owns_queue
        job = priced_job(chain, ledger)
        ledger.credit_results([(chain.nodes[0].address, job, "t1", 1)], 1)
        assert ledger.job_finished(job, "ee" * 32, 2)
        assert other.process_once() == 0 and not other.owns_queue  # the live owner keeps it
        time.sleep(2.5)  # the owner hangs: no pass, nothing said on its session
        assert other.process_once() == 2 and other.owns_queue
        assert chain.admin.job(job).status == JobStatus.COMPLETED
        assert hung.process_once() == 0 and not hung.owns_queue  # it wakes up to find the queue taken
    finally:
        hung.close()
        other.close()
        engine.dispose()


def test_a_worker_waiting_on_a_receipt_keeps_its_lock(chain: Chain, pg_url: str) -> None:
    # Waiting for a slow block is not hanging: the wait speaks on the lock session.
    engine = make_engine(pg_url)
    ledger = Ledger(engine)
    slow = ledger.outbox(chain.coordinator, lock_idle_s=1.0)
    other = ledger.outbox(chain.coordinator, lock_idle_s=1.0)
    job = priced_job(chain, ledger)
    ledger.credit_results([(chain.nodes[0].address, job, "t1", 1)], 1)
    assert ledger.job_finished(job, "ee" * 32, 2)
    rpc = chain.admin.w3.provider
    rpc.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
    try:
        worker = threading.Thread(target=slow.process_once)
        worker.start()
        time.sleep(2.5)  # the first tx waits unmined, longer than the idle limit
        assert other.process_once() == 0 and not other.owns_queue
        rpc.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        rpc.make_request("evm_mine", [])  # type: ignore[arg-type]
        worker.join(timeout=60)
        assert not worker.is_alive() and slow.owns_queue
        assert [i.state for i in rows(ledger)] == ["confirmed", "confirmed"]
    finally:
        rpc.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        slow.close()
        other.close()
        engine.dispose()
