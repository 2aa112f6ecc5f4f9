"""NodeRegistry on anvil: staking lifecycle, access control, and slashing with receipts."""

from __future__ import annotations

import pytest

from tensorgrid.chain import ChainClient
from tensorgrid.crypto import Signer, receipt_digest, sign_receipt
from tensorgrid.types import Receipt
from tests.chain.conftest import ETH, MIN_STAKE, UNBONDING_DELAY, Chain, new_id
from tests.chain.helpers import open_job, revert


def open_job_for(chain: Chain) -> str:
    """An open job on chain, funded by the submitter: slashes are proposed for a job."""
    job = new_id()
    open_job(chain.submitter, job, ETH)
    return job


def _receipt(job_id: str | None = None, output_hash: str | None = None) -> Receipt:
    return Receipt(
        job_id=job_id or new_id(),
        task_id=new_id(),
        attempt=2,
        input_hash=new_id(),
        output_hash=output_hash or new_id(),
        commitment=new_id(),
    )


def _signed_by(chain: Chain, node: ChainClient, receipt: Receipt) -> Receipt:
    key = chain.keys[[c.address for c in [chain.admin, chain.coordinator, *chain.nodes]].index(node.address)]
    return sign_receipt(Signer.from_hex(key), chain.deployment.domain, receipt)


def test_register_add_stake_and_views(chain: Chain) -> None:
    node = chain.nodes[0]
    assert not node.is_active(node.address)
    node.register(MIN_STAKE)
    assert node.stake_of(node.address) == MIN_STAKE
    assert node.is_active(node.address)
    node.add_stake(5)
    info = node.node_info(node.address)
    assert (info.stake, info.unbonding, info.registered) == (MIN_STAKE + 5, 0, True)
    assert chain.admin.balance(chain.deployment.node_registry) == MIN_STAKE + 5


def test_register_rules(chain: Chain) -> None:
    node = chain.nodes[0]
    with revert("StakeTooLow"):
        node.register(MIN_STAKE - 1)
    node.register(MIN_STAKE)
    with revert("AlreadyRegistered"):
        node.register(MIN_STAKE)
    with revert("NotRegistered"):
        chain.outsider.add_stake(1)
    with revert("ZeroAmount"):
        node.add_stake(0)


def test_unbond_then_withdraw_only_after_delay(chain: Chain) -> None:
    node = chain.nodes[0]
    node.register(3 * ETH)
    with revert("NotRegistered"):
        chain.outsider.request_unbond(1)
    with revert("InsufficientStake"):
        node.request_unbond(3 * ETH + 1)
    with revert("NothingToWithdraw"):
        node.withdraw()
    node.request_unbond(2 * ETH)
    assert node.is_active(node.address)  # 1 ETH left == minStake
    info = node.node_info(node.address)
    assert (info.stake, info.unbonding) == (ETH, 2 * ETH)
    with revert("StillUnbonding"):
        node.withdraw()
    chain.advance(UNBONDING_DELAY)
    before = node.balance()
    result = node.withdraw()
    assert node.balance() == before + 2 * ETH - result.fee
    with revert("NothingToWithdraw"):
        node.withdraw()
    assert node.node_info(node.address).unbonding == 0


def test_contract_digest_equals_python_digest(chain: Chain) -> None:
    receipt = _receipt()
    assert chain.admin.receipt_digest(receipt) == receipt_digest(chain.deployment.domain, receipt)


def test_forged_evidence_is_refused(chain: Chain) -> None:
    node = chain.nodes[0]
    node.register(2 * ETH)
    job = open_job_for(chain)
    stranger = Signer.generate()  # never registered
    with revert("NotANode"):
        chain.coordinator.propose_slash(sign_receipt(stranger, chain.deployment.domain, _receipt(job)), ETH, new_id())
    genuine = _signed_by(chain, node, _receipt(job))
    with revert("OutputMatches"):
        chain.coordinator.propose_slash(genuine, ETH, genuine.output_hash)
    # A receipt altered after signing recovers some other key.
    tampered = Receipt(**{**genuine.__dict__, "output_hash": new_id()})
    with revert("NotANode"):
        chain.coordinator.propose_slash(tampered, ETH, new_id())
    # Signed under another domain (wrong verifying contract).
    other = type(chain.deployment.domain)("TensorGrid", "1", chain.deployment.chain_id, chain.deployment.settlement)
    with revert("NotANode"):
        chain.coordinator.propose_slash(
            sign_receipt(Signer.from_hex(chain.keys[2]), other, _receipt(job)), ETH, new_id()
        )
    chain.coordinator.propose_slash(genuine, ETH // 2, new_id())
    with revert("EvidenceAlreadyUsed"):  # replay
        chain.coordinator.propose_slash(genuine, ETH // 2, new_id())
    assert node.node_info(node.address).stake == 2 * ETH - ETH // 2


def test_slash_argument_checks(chain: Chain) -> None:
    node = chain.nodes[0]
    node.register(ETH)
    genuine = _signed_by(chain, node, _receipt(open_job_for(chain)))
    with revert("ZeroAmount"):
        chain.coordinator.propose_slash(genuine, 0, new_id())


@pytest.mark.parametrize("who", ["admin", "node", "guardian", "outsider"])
def test_only_the_coordinator_may_propose_a_slash(chain: Chain, who: str) -> None:
    node = chain.nodes[0]
    node.register(ETH)
    caller = {"admin": chain.admin, "node": node, "guardian": chain.guardian, "outsider": chain.outsider}[who]
    with revert("AccessControlUnauthorizedAccount"):
        caller.propose_slash(_signed_by(chain, node, _receipt(open_job_for(chain))), ETH, new_id())


@pytest.mark.parametrize("who", ["coordinator", "node", "outsider"])
def test_only_the_admin_may_grant_roles(chain: Chain, who: str) -> None:
    caller = {"coordinator": chain.coordinator, "node": chain.nodes[0], "outsider": chain.outsider}[who]
    with revert("AccessControlUnauthorizedAccount"):
        caller.grant_role("registry", "COORDINATOR_ROLE", caller.address)
    with revert("AccessControlUnauthorizedAccount"):  # nor make itself a guardian
        caller.grant_role("registry", "GUARDIAN_ROLE", caller.address)
    chain.admin.grant_role("registry", "COORDINATOR_ROLE", chain.outsider.address)
    chain.nodes[1].register(ETH)
    receipt = _signed_by(chain, chain.nodes[1], _receipt(open_job_for(chain)))
    chain.outsider.propose_slash(receipt, 1, new_id())
