"""Settlement on anvil: epoch roots, challenge window, revocation and cumulative claims."""

from __future__ import annotations

import pytest

from tensorgrid.chain import ChainClient, EarningsTree
from tests.chain.conftest import CHALLENGE_WINDOW, ETH, Chain, new_id
from tests.chain.helpers import open_job, revert


def _post(chain: Chain, epoch: int, earnings: dict[str, int], charges: list[tuple[str, int]]) -> EarningsTree:
    tree = EarningsTree(earnings)
    chain.coordinator.post_root(epoch, tree.root, charges)
    return tree


def _claim(node: ChainClient, tree: EarningsTree) -> int:
    """Claim `node`'s leaf; return the wei it received net of gas."""
    before = node.balance()
    result = node.claim(tree.earnings[node.address], tree.proof(node.address))
    return node.balance() - before + result.fee


def test_post_root_charges_escrow_into_the_pool(chain: Chain) -> None:
    a, b = new_id(), new_id()
    open_job(chain.submitter, a, 5 * ETH)
    open_job(chain.submitter, b, 5 * ETH)
    n0, n1 = chain.nodes[0].address, chain.nodes[1].address
    tree = _post(chain, 1, {n0: 3 * ETH, n1: 2 * ETH}, [(a, 4 * ETH), (b, ETH)])
    assert chain.admin.last_epoch() == 1
    root = chain.admin.root_of(1)
    assert (root.root, root.revoked) == (tree.root.hex(), False)
    assert chain.admin.remaining_budget(a) == ETH
    assert chain.admin.remaining_budget(b) == 4 * ETH
    assert chain.admin.settlement.functions.totalCharged().call() == 5 * ETH
    assert chain.admin.owed() == chain.admin.balance(chain.deployment.settlement) == 10 * ETH


def test_post_root_rules(chain: Chain) -> None:
    job = new_id()
    open_job(chain.submitter, job, ETH)
    coordinator = chain.coordinator
    with revert("WrongEpoch"):
        coordinator.post_root(2, new_id(), [])
    with revert("EmptyRoot"):
        coordinator.post_root(1, "00" * 32, [])
    with revert("OverBudget"):
        coordinator.post_root(1, new_id(), [(job, ETH + 1)])
    with revert("OverBudget"):  # the same job twice in one call cannot exceed its budget either
        coordinator.post_root(1, new_id(), [(job, ETH), (job, 1)])
    with revert("JobNotOpen"):
        coordinator.post_root(1, new_id(), [(new_id(), 1)])
    fn = coordinator.settlement.functions.postRoot(1, bytes(32).replace(b"\0", b"\1"), [bytes.fromhex(job)], [])
    with revert("LengthMismatch"):
        coordinator._tx.send(fn, "postRoot")
    coordinator.post_root(1, new_id(), [(job, ETH)])
    with revert("WrongEpoch"):
        coordinator.post_root(1, new_id(), [])


@pytest.mark.parametrize("who", ["admin", "guardian", "node", "submitter", "outsider"])
def test_only_the_coordinator_may_post_roots(chain: Chain, who: str) -> None:
    caller = {"admin": chain.admin, "guardian": chain.guardian, "node": chain.nodes[0],
              "submitter": chain.submitter, "outsider": chain.outsider}[who]  # fmt: skip
    job = new_id()
    open_job(chain.submitter, job, ETH)
    with revert("AccessControlUnauthorizedAccount"):
        caller.post_root(1, new_id(), [(job, ETH)])


def test_claim_only_after_the_challenge_window(chain: Chain) -> None:
    job = new_id()
    open_job(chain.submitter, job, 5 * ETH)
    node = chain.nodes[0]
    tree = _post(chain, 1, {node.address: 2 * ETH}, [(job, 2 * ETH)])
    with revert("NoClaimableRoot"):
        node.claim(2 * ETH, tree.proof(node.address))
    assert node.claimable_root() == (0, "00" * 32)
    chain.advance(CHALLENGE_WINDOW - 5)
    with revert("NoClaimableRoot"):
        node.claim(2 * ETH, tree.proof(node.address))
    chain.advance(5)
    assert node.claimable_root() == (1, tree.root.hex())
    assert _claim(node, tree) == 2 * ETH
    assert node.claimed(node.address) == 2 * ETH


def test_claim_twice_and_wrong_proofs_pay_nothing(chain: Chain) -> None:
    job = new_id()
    open_job(chain.submitter, job, 5 * ETH)
    n0, n1, n2 = chain.nodes
    tree = _post(chain, 1, {n0.address: 3 * ETH, n1.address: ETH, n2.address: ETH}, [(job, 5 * ETH)])
    chain.advance(CHALLENGE_WINDOW)
    with revert("InvalidProof"):  # inflated amount
        n0.claim(4 * ETH, tree.proof(n0.address))
    with revert("InvalidProof"):  # someone else's leaf: the leaf binds msg.sender
        chain.outsider.claim(3 * ETH, tree.proof(n0.address))
    with revert("InvalidProof"):  # right amount, another node's path
        n0.claim(3 * ETH, tree.proof(n1.address))
    with revert("InvalidProof"):
        n0.claim(3 * ETH, [])
    assert _claim(n0, tree) == 3 * ETH
    with revert("NothingToClaim"):
        n0.claim(3 * ETH, tree.proof(n0.address))
    assert _claim(n1, tree) == ETH
    assert chain.admin.owed() == chain.admin.balance(chain.deployment.settlement) == ETH


def test_cumulative_claims_across_epochs(chain: Chain) -> None:
    job = new_id()
    open_job(chain.submitter, job, 10 * ETH)
    n0, n1 = chain.nodes[0], chain.nodes[1]
    tree1 = _post(chain, 1, {n0.address: ETH}, [(job, ETH)])
    chain.advance(CHALLENGE_WINDOW)
    assert _claim(n0, tree1) == ETH
    tree2 = _post(chain, 2, {n0.address: 4 * ETH, n1.address: 2 * ETH}, [(job, 5 * ETH)])
    # Epoch 2 is still in its window: epoch 1 is the claimable one, and n0 has it all already.
    with revert("NothingToClaim"):
        n0.claim(ETH, tree1.proof(n0.address))
    with revert("InvalidProof"):
        n0.claim(4 * ETH, tree2.proof(n0.address))
    chain.advance(CHALLENGE_WINDOW)
    assert _claim(n0, tree2) == 3 * ETH
    assert _claim(n1, tree2) == 2 * ETH
    with revert("InvalidProof"):  # older roots are no longer the claimable one
        n0.claim(ETH, tree1.proof(n0.address))


def test_revoked_root_is_never_claimable(chain: Chain) -> None:
    job = new_id()
    open_job(chain.submitter, job, 10 * ETH)
    node = chain.nodes[0]
    good = _post(chain, 1, {node.address: ETH}, [(job, ETH)])
    chain.advance(CHALLENGE_WINDOW)
    bad = _post(chain, 2, {node.address: 9 * ETH}, [(job, 2 * ETH)])
    chain.guardian.revoke_root(2)
    assert chain.admin.root_of(2).revoked
    chain.advance(CHALLENGE_WINDOW)
    assert node.claimable_root() == (1, good.root.hex())
    with revert("InvalidProof"):
        node.claim(9 * ETH, bad.proof(node.address))
    fixed = _post(chain, 3, {node.address: 3 * ETH}, [])  # charges of epoch 2 stayed in the pool
    chain.advance(CHALLENGE_WINDOW)
    assert _claim(node, fixed) == 3 * ETH
    assert chain.admin.owed() == chain.admin.balance(chain.deployment.settlement) == 7 * ETH


def test_revoke_rules(chain: Chain) -> None:
    job = new_id()
    open_job(chain.submitter, job, ETH)
    with revert("UnknownEpoch"):
        chain.coordinator.revoke_root(1)
    _post(chain, 1, {chain.nodes[0].address: 1}, [(job, 1)])
    chain.coordinator.revoke_root(1)
    with revert("AlreadyRevoked"):
        chain.guardian.revoke_root(1)
    _post(chain, 2, {chain.nodes[0].address: 1}, [])
    chain.advance(CHALLENGE_WINDOW)
    with revert("ChallengeWindowOver"):
        chain.guardian.revoke_root(2)


@pytest.mark.parametrize("who", ["admin", "node", "submitter", "outsider"])
def test_only_coordinator_or_guardian_may_revoke(chain: Chain, who: str) -> None:
    caller = {"admin": chain.admin, "node": chain.nodes[0], "submitter": chain.submitter,
              "outsider": chain.outsider}[who]  # fmt: skip
    _post(chain, 1, {chain.nodes[0].address: 1}, [])
    with revert("AccessControlUnauthorizedAccount"):
        caller.revoke_root(1)
    assert not chain.admin.root_of(1).revoked


def test_claims_can_never_exceed_what_was_charged(chain: Chain) -> None:
    job = new_id()
    open_job(chain.submitter, job, 10 * ETH)
    node = chain.nodes[0]
    # A faulty root promising more than was charged: the pool check stops the overdraft,
    # so the open escrow of other jobs is never touched.
    tree = _post(chain, 1, {node.address: 5 * ETH}, [(job, ETH)])
    chain.advance(CHALLENGE_WINDOW)
    with revert("PoolInsufficient"):
        node.claim(5 * ETH, tree.proof(node.address))
    assert chain.admin.owed() == chain.admin.balance(chain.deployment.settlement) == 10 * ETH


def test_post_root_charges_whole_tasks_at_the_job_price_and_never_past_the_funded_count(chain: Chain) -> None:
    """The coordinator names accepted task counts, not amounts: a job pays exactly tasks × its own
    reward, and no more tasks than its escrow funded, whatever the coordinator posts."""
    cheap, dear = new_id(), new_id()
    open_job(chain.submitter, cheap, 10 * 7, reward=7)  # 10 tasks at 7 wei
    open_job(chain.submitter, dear, 4 * ETH, reward=ETH)  # 4 tasks at 1 ETH
    with revert("OverBudget"):  # 11 tasks of a 10-task job
        chain.coordinator.post_root(1, new_id(), [(cheap, 11)])
    with revert("OverBudget"):  # over the bound across two lines of one call
        chain.coordinator.post_root(1, new_id(), [(dear, 3), (dear, 2)])
    chain.coordinator.post_root(1, new_id(), [(cheap, 3), (dear, 1)])
    assert chain.admin.job(cheap).charged == 21 and chain.admin.job(dear).charged == ETH
    assert chain.admin.settlement.functions.totalCharged().call() == 21 + ETH
    with revert("OverBudget"):  # 7 left, 8 asked
        chain.coordinator.post_root(2, new_id(), [(cheap, 8)])
    chain.coordinator.post_root(2, new_id(), [(cheap, 7), (dear, 3)])
    assert chain.admin.remaining_budget(cheap) == chain.admin.remaining_budget(dear) == 0
    with revert("OverBudget"):
        chain.coordinator.post_root(3, new_id(), [(dear, 1)])
    assert chain.admin.owed() == chain.admin.balance(chain.deployment.settlement) == 70 + 4 * ETH
