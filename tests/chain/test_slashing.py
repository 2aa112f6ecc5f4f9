"""Slashing through the coordinator's outbox on a real anvil: proposed, executed after the guardian's
delay, paid to the submitter (who pulls it), bad evidence refused and recorded, never sent twice
across a restart."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from coordinator.db import schema as s
from coordinator.repositories.jobs import NewTask
from coordinator.repositories.ledger import outbox as ob
from coordinator.repositories.ledger import slashing
from coordinator.repositories.ledger.listener import LedgerListener
from coordinator.repositories.ledger.slashing import queue_slash
from coordinator.repositories.store import Store
from coordinator.services.ledger import Ledger
from coordinator.services.outbox import Outbox
from tensorgrid.chain import ChainClient, evidence_key
from tensorgrid.crypto import Signer, sign_receipt
from tensorgrid.types import BlobRef, Receipt
from tests.chain.conftest import ETH, MAX_SLASH_BPS, SLASH_DELAY, Chain, new_id
from tests.chain.helpers import Crash, CrashAfterBroadcast, CrashBeforeBroadcast, open_job
from tests.jobs import new_job

REWARD = ETH // 100
STAKE = ETH // 2  # the job's policy stake: what a caught node forfeits
CORRECT = "c0" * 32


@pytest.fixture
def state(db_url: str) -> Iterator[Store]:
    st = Store(db_url)
    yield st
    st.close()


def run_once(outbox: Outbox) -> int:
    """One pass, then let go of the worker lock, as a process that exits does."""
    try:
        return outbox.process_once()
    finally:
        outbox.close()


def escrowed_job(chain: Chain, state: Store, tasks: int = 4) -> str:
    """A job funded on chain by the submitter, priced in the ledger, with a policy stake."""
    job_id = new_id()
    open_job(chain.submitter, job_id, REWARD * tasks, reward=REWARD)
    Ledger(state.engine).set_job_price(job_id, REWARD, REWARD * tasks)
    job = new_job(
        job_id,
        submitter=chain.submitter.address,
        spec_hash="ab" * 32,
        verification_json=json.dumps({"mode": "spotcheck"}),
        required_stake_wei=STAKE,
    )
    state.jobs.create_job(job, [NewTask(i, new_id(), BlobRef("ee" * 32, 0), 1) for i in range(tasks)], 1)
    return job_id


def key_of(chain: Chain, client: ChainClient) -> str:
    return chain.keys[[c.address for c in [chain.admin, chain.coordinator, *chain.nodes]].index(client.address)]


def store_receipt(state: Store, receipt: Receipt, node: str) -> None:
    """What the coordinator stores when it accepts a result: the receipt as `node` sent it."""
    with state.engine.begin() as conn:
        conn.execute(
            s.receipts.insert().values(
                task_id=receipt.task_id,
                attempt=receipt.attempt,
                node=node,
                input_hash=receipt.input_hash,
                output_hash=receipt.output_hash,
                commitment=receipt.commitment,
                signature=receipt.signature,
                received_ms=1,
            )
        )


def wrong_result(chain: Chain, state: Store, job_id: str, node: ChainClient, attempt: int = 1) -> Receipt:
    """`node` signs a result whose output differs from CORRECT; the coordinator stores it."""
    receipt = Receipt(job_id, new_id(), attempt, new_id(), new_id(), new_id())
    signed = sign_receipt(Signer.from_hex(key_of(chain, node)), chain.deployment.domain, receipt)
    store_receipt(state, signed, node.address)
    return signed


def caught(state: Store, job_id: str, receipt: Receipt, node: str) -> bool:
    """What verification does when it catches `node`: queue_slash in its own transaction."""
    with state.engine.begin() as conn:
        return queue_slash(
            conn,
            node=node,
            job_id=job_id,
            task_id=receipt.task_id,
            attempt=receipt.attempt,
            correct_output_sha=CORRECT,
            now_ms=2,
        )


def record(state: Store, receipt: Receipt) -> dict[str, object]:
    with state.engine.connect() as conn:
        (row,) = [r for r in slashing.slashes(conn) if r["task_id"] == receipt.task_id]
    return row


def outbox_of(state: Store, chain: Chain, cls: type[Outbox] = Outbox) -> Outbox:
    return cls(state.engine, chain.coordinator, listener=LedgerListener(chain.coordinator), backoff_ms=(50, 200))


def execute_due(chain: Chain, state: Store) -> int:
    """The settlement timer's step, at chain time (tests move it ahead of the wall clock)."""
    return Ledger(state.engine).execute_due_slashes(chain.admin.chain_time() * 1000)


def test_a_caught_node_loses_stake_to_the_submitter_after_the_delay(chain: Chain, state: Store) -> None:
    node = chain.nodes[0]
    node.register(3 * ETH)
    job_id = escrowed_job(chain, state)
    bad = wrong_result(chain, state, job_id, node)
    assert caught(state, job_id, bad, node.address)
    assert run_once(outbox_of(state, chain)) == 1
    assert node.stake_of(node.address) == 3 * ETH - STAKE  # out of the stake, pending the veto delay
    assert chain.admin.evidence_used(bad.task_id, bad.attempt)
    row = record(state, bad)
    assert row["state"] == "proposed" and row["taken_wei"] == STAKE and row["amount_wei"] == STAKE
    assert row["tx_hash"] and row["beneficiary"] == chain.submitter.address
    assert Ledger(state.engine).slashed_wei(node.address) == 0  # the guardian may still veto it
    assert execute_due(chain, state) == 0  # not before its delay
    chain.advance(SLASH_DELAY)
    assert execute_due(chain, state) == 1
    assert run_once(outbox_of(state, chain)) == 1
    assert record(state, bad)["state"] == "confirmed"
    assert chain.admin.proceeds(chain.submitter.address) == STAKE
    before = chain.submitter.balance()
    paid = chain.submitter.withdraw_proceeds()
    assert chain.submitter.balance() == before + STAKE - paid.fee
    slashed = [e for e in state.jobs.events_after(job_id, 0) if e.kind == "slashed"]
    assert len(slashed) == 1 and slashed[0].node == node.address and str(STAKE) in slashed[0].message
    assert state.jobs.get_job(job_id).state.value == "queued"  # the job itself goes on
    assert Ledger(state.engine).slashed_wei(node.address) == STAKE


def test_a_vetoed_proposal_is_recorded_and_takes_nothing(chain: Chain, state: Store) -> None:
    node = chain.nodes[1]
    node.register(3 * ETH)
    job_id = escrowed_job(chain, state)
    bad = wrong_result(chain, state, job_id, node)
    assert caught(state, job_id, bad, node.address)
    assert run_once(outbox_of(state, chain)) == 1
    chain.guardian.veto_slash(evidence_key(bad.task_id, bad.attempt))
    chain.advance(SLASH_DELAY)
    assert execute_due(chain, state) == 1
    assert run_once(outbox_of(state, chain)) == 1  # the execution fails on chain: recorded, not blocking
    assert record(state, bad)["state"] == "vetoed"
    assert node.stake_of(node.address) == 3 * ETH and Ledger(state.engine).slashed_wei(node.address) == 0
    assert all(not i.blocking for i in _items(state))
    assert execute_due(chain, state) == 0


def test_each_proposal_is_capped_at_a_share_of_what_is_left(chain: Chain, state: Store) -> None:
    node = chain.nodes[1]
    total = ETH + ETH // 4
    node.register(total)
    node.request_unbond(ETH // 2)  # unbonding stake is still slashable
    job_id = escrowed_job(chain, state)
    receipts = [wrong_result(chain, state, job_id, node) for _ in range(3)]
    for r in receipts:
        assert caught(state, job_id, r, node.address)
    assert run_once(outbox_of(state, chain)) == 3
    left, expected = total, []
    for _ in receipts:
        expected.append(min(STAKE, left * MAX_SLASH_BPS // 10_000))
        left -= expected[-1]
    assert [(record(state, r)["state"], record(state, r)["taken_wei"]) for r in receipts] == [
        ("proposed", amount) for amount in expected
    ]
    assert expected[1] < STAKE  # the cap bit: a node is never emptied by one proposal
    info = node.node_info(node.address)
    assert info.stake + info.unbonding == left
    assert [i.state for i in _items(state)] == ["confirmed"] * 3


def test_used_and_forged_evidence_fail_cleanly_and_the_outbox_goes_on(chain: Chain, state: Store) -> None:
    honest, cheat = chain.nodes[0], chain.nodes[1]
    for n in (honest, cheat):
        n.register(2 * ETH)
    job_id = escrowed_job(chain, state)
    # Evidence already spent on chain (by another coordinator, or by hand).
    used = wrong_result(chain, state, job_id, cheat)
    chain.coordinator.propose_slash(used, 1, CORRECT)
    # A receipt stored as the honest node's but signed by a stranger: the contract recovers the stranger.
    stranger = Signer.generate()
    forged = sign_receipt(stranger, chain.deployment.domain, Receipt(job_id, new_id(), 1, new_id(), new_id(), new_id()))
    store_receipt(state, forged, honest.address)
    # The honest node's own receipt, altered after signing: it recovers some other address.
    genuine = sign_receipt(
        Signer.from_hex(key_of(chain, honest)),
        chain.deployment.domain,
        Receipt(job_id, new_id(), 1, new_id(), new_id(), new_id()),
    )
    tampered = Receipt(**{**genuine.__dict__, "output_hash": new_id()})
    store_receipt(state, tampered, honest.address)
    real = wrong_result(chain, state, job_id, cheat)
    for r, n in ((used, cheat), (forged, honest), (tampered, honest), (real, cheat)):
        assert caught(state, job_id, r, n.address)
    start = chain.coordinator.pending_nonce()
    assert run_once(outbox_of(state, chain)) == 4
    assert str(record(state, used)["error"]).startswith("EvidenceAlreadyUsed(0x" + used.task_id)
    assert str(record(state, forged)["error"]).startswith(f"NotANode({stranger.address}")
    assert str(record(state, tampered)["error"]).startswith("NotANode(")
    assert record(state, real)["state"] == "proposed"
    assert [i.state for i in _items(state)] == ["failed", "failed", "failed", "confirmed"]
    assert all(not i.blocking for i in _items(state))
    assert chain.coordinator.pending_nonce() == start + 1  # the refused ones were never signed
    assert honest.stake_of(honest.address) == 2 * ETH
    assert cheat.stake_of(cheat.address) == 2 * ETH - 1 - STAKE


@pytest.mark.parametrize("crash", [CrashBeforeBroadcast, CrashAfterBroadcast])
def test_a_restart_mid_slash_rebroadcasts_and_slashes_once(chain: Chain, state: Store, crash: type[Outbox]) -> None:
    node = chain.nodes[2]
    node.register(3 * ETH)
    job_id = escrowed_job(chain, state)
    bad = wrong_result(chain, state, job_id, node)
    assert caught(state, job_id, bad, node.address)
    start = chain.coordinator.pending_nonce()
    with pytest.raises(Crash):
        run_once(outbox_of(state, chain, crash))
    (sent,) = _items(state)
    assert sent.state == "sent" and sent.raw_tx and sent.nonce == start
    assert caught(state, job_id, bad, node.address)  # caught again after the restart: same key, nothing new
    assert run_once(outbox_of(state, chain)) == 1  # a new coordinator process over the same database
    (done,) = _items(state)
    assert done.state == "confirmed" and done.tx_hash == sent.tx_hash  # the same bytes, not a new tx
    assert chain.coordinator.pending_nonce() == start + 1
    assert node.stake_of(node.address) == 3 * ETH - STAKE
    assert record(state, bad)["state"] == "proposed"
    assert chain.admin.slash_proposal(evidence_key(bad.task_id, bad.attempt)).amount == STAKE


def test_evidence_spent_while_the_coordinator_was_down_fails_on_chain(chain: Chain, state: Store) -> None:
    node = chain.nodes[0]
    node.register(3 * ETH)
    job_id = escrowed_job(chain, state)
    bad = wrong_result(chain, state, job_id, node)
    assert caught(state, job_id, bad, node.address)
    start = chain.coordinator.pending_nonce()
    with pytest.raises(Crash):
        run_once(outbox_of(state, chain, CrashBeforeBroadcast))  # signed, never sent
    chain.admin.grant_role("registry", "COORDINATOR_ROLE", chain.guardian.address)
    chain.guardian.propose_slash(bad, ETH, CORRECT)  # someone else uses the evidence
    assert run_once(outbox_of(state, chain)) == 1
    (item,) = _items(state)
    assert item.state == "failed" and item.nonce == start and not item.blocking  # mined, reverted
    row = record(state, bad)
    assert row["state"] == "failed" and str(row["error"]).startswith("EvidenceAlreadyUsed(")
    assert node.stake_of(node.address) == 2 * ETH and chain.coordinator.pending_nonce() == start + 1


def _items(state: Store) -> list[ob.OutboxItem]:
    with state.engine.connect() as conn:
        return ob.items(conn)
