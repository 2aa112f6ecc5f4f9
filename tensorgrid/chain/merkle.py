"""The cumulative-earnings Merkle tree, built exactly as Settlement.claim verifies it.

Leaf of (node, cumulative wei): keccak256(keccak256(abi.encode(address, uint256))) — the
double hash of OpenZeppelin's standard tree, so a 64-byte inner node can never pass as a
leaf. Inner nodes hash their two children sorted (OpenZeppelin's commutative keccak), so a
proof is just the list of siblings from the leaf up. Leaves are sorted by hash, which makes
the root a function of the earnings alone; an odd node at the end of a level moves up as is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eth_hash.auto import keccak

from tensorgrid.chain.errors import ChainError
from tensorgrid.crypto import normalize_address

_UINT256_MAX = 2**256 - 1


def leaf_hash(node: str, cumulative: int) -> bytes:
    """keccak256(bytes.concat(keccak256(abi.encode(node, cumulative))))."""
    if isinstance(cumulative, bool) or not isinstance(cumulative, int) or not 0 <= cumulative <= _UINT256_MAX:
        raise ChainError(f"cumulative earnings must be a uint256 number of wei, got {cumulative!r}")
    encoded = bytes(12) + bytes.fromhex(normalize_address(node)[2:]) + cumulative.to_bytes(32, "big")
    return keccak(keccak(encoded))


def hash_pair(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin's commutative keccak256 of two 32-byte nodes."""
    return keccak(a + b) if a < b else keccak(b + a)


def verify_proof(root: bytes, node: str, cumulative: int, proof: Sequence[bytes]) -> bool:
    """What the contract checks: folding `proof` over the leaf gives `root`."""
    computed = leaf_hash(node, cumulative)
    for sibling in proof:
        computed = hash_pair(computed, sibling)
    return computed == root


class EarningsTree:
    """Merkle tree over {node address: cumulative wei earned since genesis}."""

    def __init__(self, earnings: Mapping[str, int]) -> None:
        if not earnings:
            raise ChainError("an earnings tree needs at least one node")
        self.earnings: dict[str, int] = {}
        for node, amount in earnings.items():
            address = normalize_address(node)
            if address in self.earnings:
                raise ChainError(f"node {address} appears twice in the earnings")
            self.earnings[address] = amount
        by_leaf = sorted((leaf_hash(a, v), a) for a, v in self.earnings.items())
        self._index = {address: i for i, (_, address) in enumerate(by_leaf)}
        self._levels: list[list[bytes]] = [[leaf for leaf, _ in by_leaf]]
        while len(self._levels[-1]) > 1:
            level = self._levels[-1]
            above = [hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                above.append(level[-1])
            self._levels.append(above)

    @property
    def root(self) -> bytes:
        """The 32-byte root to post on chain."""
        return self._levels[-1][0]

    @property
    def total(self) -> int:
        """Sum of all cumulative earnings: should equal Settlement.totalCharged after the post."""
        return sum(self.earnings.values())

    def proof(self, node: str) -> list[bytes]:
        """Siblings from `node`'s leaf up to the root; ChainError if the node has no leaf."""
        address = normalize_address(node)
        if address not in self._index:
            raise ChainError(f"node {address} has no earnings in this tree")
        index = self._index[address]
        path = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index //= 2
        return path
