"""The chain layer: contract artifacts, deployment, the Merkle earnings tree, a typed client.

python -m tensorgrid.chain.build      compile contracts/src into tensorgrid/chain/compiled
python -m tensorgrid.chain.deploy     deploy and write the deployments file

The names below load their module on first use (PEP 562): web3 takes about a second of CPU
to import, and a coordinator or node without a chain never needs it. The deploy function
is not among them (its module bears its name): from tensorgrid.chain.deploy import deploy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tensorgrid.chain._tx import TxResult
    from tensorgrid.chain.anvil import Anvil, start_anvil
    from tensorgrid.chain.artifacts import Artifact, load_artifact
    from tensorgrid.chain.client import (
        ChainClient,
        JobInfo,
        JobStatus,
        NodeInfo,
        RootInfo,
        SlashProposal,
        SlashState,
        receipt_tuple,
    )
    from tensorgrid.chain.deploy import Deployment, load_deployment
    from tensorgrid.chain.encoding import evidence_key, to_bytes32
    from tensorgrid.chain.errors import ChainError, ContractReverted
    from tensorgrid.chain.merkle import EarningsTree, hash_pair, leaf_hash, verify_proof

_HOMES = {
    "TxResult": "_tx",
    "Anvil": "anvil",
    "start_anvil": "anvil",
    "Artifact": "artifacts",
    "load_artifact": "artifacts",
    "ChainClient": "client",
    "JobInfo": "client",
    "JobStatus": "client",
    "NodeInfo": "client",
    "RootInfo": "client",
    "SlashProposal": "client",
    "SlashState": "client",
    "receipt_tuple": "client",
    "Deployment": "deploy",
    "load_deployment": "deploy",
    "evidence_key": "encoding",
    "to_bytes32": "encoding",
    "ChainError": "errors",
    "ContractReverted": "errors",
    "EarningsTree": "merkle",
    "hash_pair": "merkle",
    "leaf_hash": "merkle",
    "verify_proof": "merkle",
}

__all__ = [
    "Anvil",
    "Artifact",
    "ChainClient",
    "ChainError",
    "ContractReverted",
    "Deployment",
    "EarningsTree",
    "JobInfo",
    "JobStatus",
    "NodeInfo",
    "RootInfo",
    "SlashProposal",
    "SlashState",
    "TxResult",
    "evidence_key",
    "hash_pair",
    "leaf_hash",
    "load_artifact",
    "load_deployment",
    "receipt_tuple",
    "start_anvil",
    "to_bytes32",
    "verify_proof",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
