"""Compiled contract artifacts: the committed contracts/artifacts/<Name>.json files.

They are written by `python -m tensorgrid.chain.build` and read here; nothing else
knows ABI or bytecode. The artifacts live beside the Solidity sources at the repository
root, so this works from a source checkout or an editable install.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tensorgrid.chain.errors import ChainError

CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "contracts"
ARTIFACTS_DIR = CONTRACTS_DIR / "artifacts"
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
