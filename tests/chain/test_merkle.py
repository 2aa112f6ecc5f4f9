"""The Python earnings tree: proofs verify, the root ignores input order, bad input is refused."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_hash.auto import keccak

from tensorgrid.chain import ChainError, EarningsTree, leaf_hash, verify_proof
from tensorgrid.crypto import Signer

NODES = [Signer.generate().address for _ in range(13)]


def test_leaf_is_the_double_hash_of_abi_encode() -> None:
    node = NODES[0]
    assert leaf_hash(node, 12345) == keccak(keccak(encode(["address", "uint256"], [node, 12345])))
    assert leaf_hash(node.lower(), 12345) == leaf_hash(node, 12345)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8, 13])
def test_every_proof_verifies(size: int) -> None:
    earnings = {n: (i + 1) * 10**17 for i, n in enumerate(NODES[:size])}
    tree = EarningsTree(earnings)
    for node, amount in earnings.items():
        proof = tree.proof(node)
        assert verify_proof(tree.root, node, amount, proof)
        assert not verify_proof(tree.root, node, amount + 1, proof)
    assert tree.total == sum(earnings.values())
    assert EarningsTree(dict(reversed(list(earnings.items())))).root == tree.root
    if size == 1:
        assert tree.root == leaf_hash(NODES[0], earnings[NODES[0]]) and tree.proof(NODES[0]) == []


def test_bad_input_is_refused() -> None:
    with pytest.raises(ChainError):
        EarningsTree({})
    with pytest.raises(ChainError):
        EarningsTree({NODES[0]: 1, NODES[0].lower(): 2})
    with pytest.raises(ChainError):
        EarningsTree({NODES[0]: -1})
    with pytest.raises(ChainError):
        EarningsTree({NODES[0]: 1.5})  # type: ignore[dict-item]
    with pytest.raises(ChainError):
        EarningsTree({NODES[0]: 1}).proof(NODES[1])
