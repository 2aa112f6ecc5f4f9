"""The chain layer: contract artifacts, deployment, the Merkle earnings tree, a typed client.

python -m tensorgrid.chain.build      compile contracts/src into contracts/artifacts
python -m tensorgrid.chain.deploy     deploy and write the deployments file
"""

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
    evidence_key,
    receipt_tuple,
    to_bytes32,
)
from tensorgrid.chain.deploy import Deployment, deploy, load_deployment
from tensorgrid.chain.errors import ChainError, ContractReverted
from tensorgrid.chain.merkle import EarningsTree, hash_pair, leaf_hash, verify_proof

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
    "deploy",
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
