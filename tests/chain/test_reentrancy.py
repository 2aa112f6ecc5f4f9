"""A malicious receiver re-enters claim, withdraw, cancel and reclaim while being paid.

ReentrantReceiver never reverts in `receive`: it records whether its nested call went
through. So a successful outer call plus a failed nested one, with exactly one payment,
shows the contracts themselves stop the reentry (ReentrancyGuard and effects before
interactions), not a revert that would undo the attack.
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_hash.auto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.types import TxParams, Wei

from tensorgrid.chain import EarningsTree, load_artifact
from tests.chain.conftest import CHALLENGE_WINDOW, ETH, UNBONDING_DELAY, Chain, new_id

GUARD_ERROR = keccak(b"ReentrancyGuardReentrantCall()")[:4]


class Attacker:
    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.w3: Web3 = chain.admin.w3
        self.owner = Web3.to_checksum_address(
            chain.outsider.address
        )  # anvil's dev accounts are unlocked: transact() works
        art = load_artifact("test/ReentrantReceiver")
        factory = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        receipt = self._wait(factory.constructor().transact({"from": self.owner}))
        self.contract: Contract = self.w3.eth.contract(address=receipt["contractAddress"], abi=art.abi)
        self.address: str = self.contract.address

    def _wait(self, tx_hash: Any) -> Any:
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        assert receipt["status"] == 1
        return receipt

    def execute(self, target: Contract, fn: str, args: list[Any], value: int = 0) -> None:
        data = target.encode_abi(fn, args=args)
        tx: TxParams = {"from": self.owner, "value": Wei(value)}
        self._wait(self.contract.functions.execute(target.address, value, data).transact(tx))

    def arm(self, target: Contract, fn: str, args: list[Any]) -> None:
        data = target.encode_abi(fn, args=args)
        self._wait(self.contract.functions.arm(target.address, data).transact({"from": self.owner}))

    def balance(self) -> int:
        return int(self.w3.eth.get_balance(self.contract.address))

    def assert_reentry_blocked(self) -> None:
        view = self.contract.functions
        assert view.reentryAttempts().call() == 1
        assert view.lastReentrySucceeded().call() is False
        assert bytes(view.lastReentryResult().call())[:4] == GUARD_ERROR


@pytest.fixture
def attacker(chain: Chain) -> Attacker:
    return Attacker(chain)


def _assert_solvent(chain: Chain) -> None:
    assert chain.admin.owed() == chain.admin.balance(chain.deployment.settlement)


def test_reentering_claim(chain: Chain, attacker: Attacker) -> None:
    job = new_id()
    chain.submitter.create_job(job, new_id(), chain.submitter.chain_time() + 10_000, 10 * ETH, reward_per_task=1)
    tree = EarningsTree({attacker.address: 2 * ETH, chain.nodes[0].address: 3 * ETH})
    chain.coordinator.post_root(1, tree.root, [(job, 5 * ETH)])
    chain.advance(CHALLENGE_WINDOW)
    settlement = chain.admin.settlement
    args = [2 * ETH, tree.proof(attacker.address)]
    attacker.arm(settlement, "claim", args)
    attacker.execute(settlement, "claim", args)
    attacker.assert_reentry_blocked()
    assert attacker.balance() == 2 * ETH
    assert chain.admin.claimed(attacker.address) == 2 * ETH
    _assert_solvent(chain)


def test_reentering_withdraw(chain: Chain, attacker: Attacker) -> None:
    registry = chain.admin.registry
    attacker.execute(registry, "register", [], value=3 * ETH)
    attacker.execute(registry, "requestUnbond", [2 * ETH])
    chain.advance(UNBONDING_DELAY)
    attacker.arm(registry, "withdraw", [])
    attacker.execute(registry, "withdraw", [])
    attacker.assert_reentry_blocked()
    assert attacker.balance() == 2 * ETH
    info = chain.admin.node_info(attacker.address)
    assert (info.stake, info.unbonding) == (ETH, 0)
    assert chain.admin.balance(chain.deployment.node_registry) == ETH


@pytest.mark.parametrize("exit_fn", ["cancel", "reclaim"])
def test_reentering_cancel_and_reclaim(chain: Chain, attacker: Attacker, exit_fn: str) -> None:
    settlement = chain.admin.settlement
    job = bytes.fromhex(new_id())
    attacker.execute(settlement, "createJob", [job, bytes(32), chain.admin.chain_time() + 100, 1], value=4 * ETH)
    chain.coordinator.post_root(1, new_id(), [(job, ETH)])
    chain.advance(101)  # the charge locked the job: it can be left only after its deadline
    attacker.arm(settlement, exit_fn, [job])
    attacker.execute(settlement, exit_fn, [job])
    attacker.assert_reentry_blocked()
    assert attacker.balance() == 3 * ETH
    _assert_solvent(chain)


def test_cross_function_reentry_from_cancel_into_claim(chain: Chain, attacker: Attacker) -> None:
    settlement = chain.admin.settlement
    job = bytes.fromhex(new_id())
    attacker.execute(settlement, "createJob", [job, bytes(32), chain.admin.chain_time() + 100, 1], value=4 * ETH)
    tree = EarningsTree({attacker.address: ETH})
    chain.coordinator.post_root(1, tree.root, [(job, ETH)])
    chain.advance(CHALLENGE_WINDOW)  # past the job's deadline too: its lock is over
    attacker.arm(settlement, "claim", [ETH, tree.proof(attacker.address)])
    attacker.execute(settlement, "cancel", [job])
    attacker.assert_reentry_blocked()
    assert attacker.balance() == 3 * ETH  # the refund only; the claim stays for later
    assert chain.admin.claimed(attacker.address) == 0
    _assert_solvent(chain)
