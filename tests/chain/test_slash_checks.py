"""Checks and balances on slashing, on anvil: what a coordinator cannot do with a node's stake.

Each test is an abuse by the coordinator (or a hostile beneficiary) and the rule that stops it:
a proposal names the job its receipt was signed for, which must be open; it pays that job's
submitter, never an address the coordinator picks; it takes at most MAX_SLASH_BPS of the
stake; it waits SLASH_DELAY seconds, in which the guardian can veto it; proceeds are pulled.
"""

from __future__ import annotations

import pytest
from web3 import Web3

from tensorgrid.chain import ChainClient, ContractReverted, SlashState, evidence_key, load_artifact
from tensorgrid.crypto import Signer, sign_receipt
from tensorgrid.types import Receipt
from tests.chain.conftest import ETH, MAX_SLASH_BPS, SLASH_DELAY, Chain, new_id
from tests.chain.helpers import open_job, revert


def _bad_receipt(chain: Chain, node_index: int, job_id: str) -> Receipt:
    """A receipt signed by node `node_index` for a task of `job_id`, with a (wrong) output."""
    receipt = Receipt(job_id=job_id, task_id=new_id(), attempt=1, input_hash=new_id(), output_hash=new_id(),
                      commitment=new_id())  # fmt: skip
    return sign_receipt(Signer.from_hex(chain.keys[2 + node_index]), chain.deployment.domain, receipt)


def _pid(receipt: Receipt) -> str:
    """The proposal id of a receipt's evidence: keccak256(abi.encode(taskId, attempt))."""
    return evidence_key(receipt.task_id, receipt.attempt).hex()


def _staked(chain: Chain, stake: int = 4 * ETH) -> ChainClient:
    node = chain.nodes[0]
    node.register(stake)
    return node


def _registry_solvent(chain: Chain) -> None:
    assert chain.admin.registry_owed() == chain.admin.balance(chain.deployment.node_registry)


def test_a_slash_waits_its_delay_then_pays_the_jobs_submitter_who_pulls_it(chain: Chain) -> None:
    node = _staked(chain)
    job = new_id()
    open_job(chain.submitter, job, ETH)
    bad = _bad_receipt(chain, 0, job)
    chain.coordinator.propose_slash(bad, ETH, new_id())
    proposal = chain.admin.slash_proposal(_pid(bad))
    assert (proposal.state, proposal.amount, proposal.job_id) == (SlashState.PENDING, ETH, job)
    assert proposal.beneficiary == chain.submitter.address  # recorded at createJob, not chosen
    assert node.node_info(node.address).stake == 3 * ETH  # taken now: it cannot be withdrawn meanwhile
    _registry_solvent(chain)
    with revert("DelayNotOver"):
        chain.outsider.execute_slash(proposal.id)
    chain.advance(SLASH_DELAY)
    executed = chain.outsider.execute_slash(proposal.id)  # anyone may execute once the delay is over
    assert chain.admin.slash_proposal(proposal.id).state == SlashState.EXECUTED
    # the Slashed event names the job, so a third party needs no join with SlashProposed
    assert chain.outsider.slashed_in(executed.tx_hash) == [
        (node.address, job, bad.task_id, bad.attempt, ETH, chain.submitter.address)
    ]
    with revert("NotPending"):
        chain.outsider.execute_slash(proposal.id)
    assert chain.admin.proceeds(chain.submitter.address) == ETH
    before = chain.submitter.balance()
    paid = chain.submitter.withdraw_proceeds()
    assert chain.submitter.balance() == before + ETH - paid.fee
    with revert("NothingToWithdraw"):
        chain.submitter.withdraw_proceeds()
    _registry_solvent(chain)


def test_the_guardian_vetoes_within_the_delay_and_the_node_keeps_its_stake(chain: Chain) -> None:
    node = _staked(chain)
    job = new_id()
    open_job(chain.submitter, job, ETH)
    bad = _bad_receipt(chain, 0, job)
    chain.coordinator.propose_slash(bad, ETH, new_id())
    pid = _pid(bad)
    for intruder in (chain.coordinator, chain.admin, chain.submitter, node):
        with revert("AccessControlUnauthorizedAccount"):
            intruder.veto_slash(pid)
    chain.guardian.veto_slash(pid)
    assert chain.admin.slash_proposal(pid).state == SlashState.VETOED
    assert node.node_info(node.address).stake == 4 * ETH
    chain.advance(SLASH_DELAY)
    with revert("NotPending"):
        chain.outsider.execute_slash(pid)
    with revert("EvidenceAlreadyUsed"):  # the coordinator cannot simply propose it again
        chain.coordinator.propose_slash(bad, ETH, new_id())
    assert chain.admin.proceeds(chain.submitter.address) == 0
    _registry_solvent(chain)


def test_the_guardian_cannot_veto_after_the_delay(chain: Chain) -> None:
    _staked(chain)
    job = new_id()
    open_job(chain.submitter, job, ETH)
    bad = _bad_receipt(chain, 0, job)
    chain.coordinator.propose_slash(bad, ETH, new_id())
    chain.advance(SLASH_DELAY)
    with revert("DelayOver"):  # the delay is the guardian's window; after it the node's stake is forfeit
        chain.guardian.veto_slash(_pid(bad))


def test_one_proposal_takes_at_most_the_cap(chain: Chain) -> None:
    node = _staked(chain, 4 * ETH)
    node.request_unbond(ETH)  # unbonding stake counts and stays slashable
    job = new_id()
    open_job(chain.submitter, job, ETH)
    bad = _bad_receipt(chain, 0, job)
    chain.coordinator.propose_slash(bad, 100 * ETH, new_id())  # asks for everything
    cap = 4 * ETH * MAX_SLASH_BPS // 10_000
    assert chain.admin.slash_proposal(_pid(bad)).amount == cap
    info = node.node_info(node.address)
    assert info.stake + info.unbonding == 4 * ETH - cap
    _registry_solvent(chain)


def test_no_slash_for_an_old_receipt_or_a_job_that_is_not_on_chain(chain: Chain) -> None:
    _staked(chain)
    finished = new_id()
    open_job(chain.submitter, finished, ETH)
    old = _bad_receipt(chain, 0, finished)
    chain.coordinator.record_result(finished, new_id())  # settled: its receipts are old news
    with revert("JobClosed"):
        chain.coordinator.propose_slash(old, ETH, new_id())
    with revert("UnknownJob"):  # a receipt the node signed for a job nobody escrowed
        chain.coordinator.propose_slash(_bad_receipt(chain, 0, new_id()), ETH, new_id())
    # Another job's id cannot be swapped in: the job id is part of what the node signed.
    other = new_id()
    open_job(chain.outsider, other, ETH)
    swapped = Receipt(**{**old.__dict__, "job_id": other})
    with revert("NotANode"):
        chain.coordinator.propose_slash(swapped, ETH, new_id())


def test_the_beneficiary_is_the_submitter_whoever_the_coordinator_would_like_paid(chain: Chain) -> None:
    """The old slash took a beneficiary argument; proposeSlash has none, and its ABI proves it."""
    _staked(chain)
    abi = load_artifact("NodeRegistry").abi
    propose = next(f for f in abi if f.get("name") == "proposeSlash")
    assert [i["name"] for i in propose["inputs"]] == ["r", "signature", "amount", "correctOutputHash"]
    assert not any(f.get("name") == "slash" for f in abi)
    job = new_id()
    open_job(chain.outsider, job, ETH)  # the outsider's job: the outsider is paid
    bad = _bad_receipt(chain, 0, job)
    chain.coordinator.propose_slash(bad, ETH, new_id())
    assert chain.admin.slash_proposal(_pid(bad)).beneficiary == chain.outsider.address


def test_a_beneficiary_that_rejects_ether_blocks_nothing(chain: Chain) -> None:
    """A submitter contract that reverts on receiving ether: the slash still executes (nothing is
    pushed), other slashes go on, and the contract can have its proceeds sent elsewhere."""
    w3 = chain.admin.w3
    art = load_artifact("test/RejectingSubmitter")
    deployer = chain.outsider
    deployed = deployer._tx.send(w3.eth.contract(abi=art.abi, bytecode=art.bytecode).constructor(), "deploy")
    rejecting = w3.eth.contract(address=Web3.to_checksum_address(deployed.contract_address or ""), abi=art.abi)
    settlement = chain.admin.settlement
    job = new_id()
    create = settlement.encode_abi("createJob", [bytes.fromhex(job), bytes(32), chain.admin.chain_time() + 10_000, 1])
    deployer._tx.send(rejecting.functions.execute(settlement.address, ETH, create), "createJob", value=ETH)
    assert chain.admin.job(job).submitter == rejecting.address
    node = _staked(chain)
    first, second = _bad_receipt(chain, 0, job), _bad_receipt(chain, 0, job)
    chain.coordinator.propose_slash(first, ETH // 2, new_id())
    chain.coordinator.propose_slash(second, ETH // 4, new_id())
    chain.advance(SLASH_DELAY)
    chain.outsider.execute_slash(_pid(first))
    chain.outsider.execute_slash(_pid(second))
    assert chain.admin.proceeds(rejecting.address) == ETH // 2 + ETH // 4
    # Withdrawing to itself fails (its own choice); to another address it works.
    withdraw_self = chain.admin.registry.encode_abi("withdrawProceeds", [rejecting.address])
    with pytest.raises(ContractReverted):
        deployer._tx.send(rejecting.functions.execute(chain.deployment.node_registry, 0, withdraw_self), "withdraw")
    before = chain.outsider.balance()
    withdraw_out = chain.admin.registry.encode_abi("withdrawProceeds", [chain.outsider.address])
    paid = deployer._tx.send(rejecting.functions.execute(chain.deployment.node_registry, 0, withdraw_out), "withdraw")
    assert chain.outsider.balance() == before + ETH // 2 + ETH // 4 - paid.fee
    assert node.node_info(node.address).stake == 4 * ETH - ETH // 2 - ETH // 4
    _registry_solvent(chain)


def test_the_guardian_is_named_at_deploy_and_is_not_the_coordinator(chain: Chain) -> None:
    registry, settlement = chain.admin.registry, chain.admin.settlement
    guardian_role = registry.functions.GUARDIAN_ROLE().call()
    assert registry.functions.hasRole(guardian_role, chain.guardian.address).call()
    assert settlement.functions.hasRole(guardian_role, chain.guardian.address).call()
    assert not registry.functions.hasRole(guardian_role, chain.coordinator.address).call()
    assert registry.functions.maxSlashBps().call() == MAX_SLASH_BPS
    assert registry.functions.slashDelay().call() == SLASH_DELAY
    art = load_artifact("NodeRegistry")
    factory = chain.admin.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    coordinator = chain.coordinator.address
    same = factory.constructor(chain.admin.address, coordinator, coordinator, chain.deployment.settlement, 1, 1, 1, 1)
    with revert("GuardianIsCoordinator"):
        chain.admin._tx.send(same, "deploy")
