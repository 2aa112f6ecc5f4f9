"""Compiled contract artifacts: the committed tensorgrid/chain/compiled/<Name>.json files.

They are written by `python -m tensorgrid.chain.build` and read here; nothing else
knows ABI or bytecode. They live inside the package, so an installed wheel carries them
(the deployable ones: the test-only contracts under compiled/test/ stay in the checkout).
CONTRACTS_DIR, the Solidity sources and the npm-installed solc and anvil, exists only in a
source checkout: compiling needs it, loading an artifact does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tensorgrid.chain.errors import ChainError

ARTIFACTS_DIR = Path(__file__).resolve().parent / "compiled"
CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "contracts"
DEPLOYABLE = ("NodeRegistry", "Settlement")


@dataclass(frozen=True)
class Artifact:
    """One compiled contract: its ABI, creation bytecode, and what produced them."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    compiler: str
    evm_version: str
    source_hash: str


@lru_cache(maxsize=16)
def load_artifact(name: str, directory: Path | None = None) -> Artifact:
    """The artifact of contract `name` (test-only contracts: name "test/<Name>")."""
    path = (directory or ARTIFACTS_DIR) / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChainError(f"no artifact {path}; run `python -m tensorgrid.chain.build`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ChainError(f"cannot read artifact {path}: {exc}") from None
    return Artifact(
        name=name.rsplit("/", 1)[-1],
        abi=data["abi"],
        bytecode=data["bytecode"],
        compiler=data["compiler"],
        evm_version=data["evmVersion"],
        source_hash=data["sourceHash"],
    )
