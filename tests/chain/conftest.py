"""A real anvil for the whole session, and freshly deployed contracts for each test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from web3 import Web3

from tensorgrid.chain import Anvil, ChainClient, Deployment, start_anvil
from tensorgrid.chain.deploy import deploy

ETH = 10**18
MIN_STAKE = ETH
UNBONDING_DELAY = 1000
CHALLENGE_WINDOW = 600
SLASH_DELAY = 300  # the guardian's time to veto a slash proposal
MAX_SLASH_BPS = 5000  # one proposal takes at most half a node's stake


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    node = start_anvil(accounts=12, balance_eth=1_000_000)
    yield node
    node.stop()


@pytest.fixture(scope="session")
def w3(anvil: Anvil) -> Web3:
    return Web3(Web3.HTTPProvider(anvil.rpc_url))


@dataclass
class Chain:
    """Clients for each role on one fresh deployment (anvil accounts in brackets)."""

    anvil: Anvil
    deployment: Deployment
    admin: ChainClient  # [0] deployer, role admin
    coordinator: ChainClient  # [1]
    nodes: list[ChainClient]  # [2], [3], [4]
    submitter: ChainClient  # [5]
    guardian: ChainClient  # [6], the guardian named at deploy (GUARDIAN_ROLE on both contracts)
    outsider: ChainClient  # [7], no role at all
    keys: list[str]

    def advance(self, seconds: int) -> None:
        self.anvil.advance_time(seconds)

    def client(self, key: str) -> ChainClient:
        return ChainClient(self.admin.w3, self.deployment, key)


@pytest.fixture
def chain(anvil: Anvil, w3: Web3) -> Chain:
    keys = anvil.keys
    deployment = deploy(
        anvil.rpc_url,
        keys[0],
        coordinator=anvil.addresses[1],
        guardian=anvil.addresses[6],
        min_stake=MIN_STAKE,
        unbonding_delay=UNBONDING_DELAY,
        challenge_window=CHALLENGE_WINDOW,
        slash_delay=SLASH_DELAY,
        max_slash_bps=MAX_SLASH_BPS,
    )
    clients = [ChainClient(w3, deployment, k) for k in keys[:8]]
    return Chain(anvil, deployment, clients[0], clients[1], clients[2:5], clients[5], clients[6], clients[7], keys)


def new_id() -> str:
    """A random bytes32 as 64 hex digits."""
    return secrets.token_hex(32)
