"""Deploy NodeRegistry and Settlement and write the one deployments file.

The deployments JSON is the only place contract addresses come from:

    {"chainId": 31337, "deployBlock": 1, "deployer": "0x…",
     "contracts": {"NodeRegistry": "0x…", "Settlement": "0x…"},
     "roles": {"admin": "0x…", "coordinator": "0x…", "guardian": "0x…"},
     "params": {"minStakeWei": "…", "unbondingDelay": 86400, "challengeWindow": 3600,
                "slashDelay": 86400, "maxSlashBps": 5000},
     "eip712": {"name": "TensorGrid", "version": "1", "chainId": 31337, "verifyingContract": "0x…"},
     "compiler": "solc 0.8.37+…", "sourceHash": "…"}

Wei amounts are decimal strings (JSON numbers lose precision past 2**53 in many readers).

    TENSORGRID_DEPLOYER_KEY=0x… python -m tensorgrid.chain.deploy --rpc URL \
        --coordinator 0x… --guardian 0x… --min-stake-wei 1000000000000000000 --out var/deployments.json

The guardian (GUARDIAN_ROLE on both contracts) can veto slash proposals during their delay
and revoke roots during their challenge window; it must be a key other than the coordinator's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import Web3

from tensorgrid.chain._tx import ErrorDecoder, Transactor
from tensorgrid.chain.artifacts import load_artifact
from tensorgrid.chain.errors import ChainError
from tensorgrid.crypto import normalize_address
from tensorgrid.types import Domain

EIP712_NAME = "TensorGrid"
EIP712_VERSION = "1"
DEFAULT_SLASH_DELAY = 24 * 3600  # seconds the guardian has to veto a slash proposal
DEFAULT_MAX_SLASH_BPS = 5000  # one proposal takes at most half of a node's stake


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live and how they were configured."""

    chain_id: int
    deploy_block: int
    deployer: str
    node_registry: str
    settlement: str
    admin: str
    coordinator: str
    guardian: str
    min_stake: int
    unbonding_delay: int
    challenge_window: int
    slash_delay: int
    max_slash_bps: int
    compiler: str
    source_hash: str

    @property
    def domain(self) -> Domain:
        """The EIP-712 domain nodes sign receipts under (verifying contract = NodeRegistry)."""
        return Domain(EIP712_NAME, EIP712_VERSION, self.chain_id, self.node_registry)

    def to_json(self) -> dict[str, Any]:
        return {
            "chainId": self.chain_id,
            "deployBlock": self.deploy_block,
            "deployer": self.deployer,
            "contracts": {"NodeRegistry": self.node_registry, "Settlement": self.settlement},
            "roles": {"admin": self.admin, "coordinator": self.coordinator, "guardian": self.guardian},
            "params": {
                "minStakeWei": str(self.min_stake),
                "unbondingDelay": self.unbonding_delay,
                "challengeWindow": self.challenge_window,
                "slashDelay": self.slash_delay,
                "maxSlashBps": self.max_slash_bps,
            },
            "eip712": {
                "name": EIP712_NAME,
                "version": EIP712_VERSION,
                "chainId": self.chain_id,
                "verifyingContract": self.node_registry,
            },
            "compiler": self.compiler,
            "sourceHash": self.source_hash,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        try:
            return cls(
                chain_id=int(data["chainId"]),
                deploy_block=int(data["deployBlock"]),
                deployer=normalize_address(data["deployer"]),
                node_registry=normalize_address(data["contracts"]["NodeRegistry"]),
                settlement=normalize_address(data["contracts"]["Settlement"]),
                admin=normalize_address(data["roles"]["admin"]),
                coordinator=normalize_address(data["roles"]["coordinator"]),
                guardian=normalize_address(data["roles"]["guardian"]),
                min_stake=int(data["params"]["minStakeWei"]),
                unbonding_delay=int(data["params"]["unbondingDelay"]),
                challenge_window=int(data["params"]["challengeWindow"]),
                slash_delay=int(data["params"]["slashDelay"]),
                max_slash_bps=int(data["params"]["maxSlashBps"]),
                compiler=str(data["compiler"]),
                source_hash=str(data["sourceHash"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainError(f"malformed deployments file: {exc!r}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the deployments file atomically."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, target)
        return target


def load_deployment(path: str | os.PathLike[str]) -> Deployment:
    """Read a deployments file written by `deploy`."""
    try:
        return Deployment.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ChainError(f"no deployments file at {path}; run python -m tensorgrid.chain.deploy") from None
    except json.JSONDecodeError as exc:
        raise ChainError(f"deployments file {path} is not JSON: {exc}") from None


def deploy(
    rpc_url: str,
    private_key: str | bytes,
    *,
    coordinator: str,
    guardian: str,
    min_stake: int,
    unbonding_delay: int = 7 * 24 * 3600,
    challenge_window: int = 3600,
    slash_delay: int = DEFAULT_SLASH_DELAY,
    max_slash_bps: int = DEFAULT_MAX_SLASH_BPS,
    admin: str | None = None,
    out: str | os.PathLike[str] | None = None,
) -> Deployment:
    """Deploy both contracts from `private_key`'s account; write `out` if given.

    `guardian` (not the coordinator) may veto slashes and revoke roots; `admin` (default: the
    deployer) may grant and revoke roles.
    """
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 60}))
    registry_art = load_artifact("NodeRegistry")
    settlement_art = load_artifact("Settlement")
    sender = Transactor(w3, private_key, ErrorDecoder(registry_art.abi, settlement_art.abi))
    admin_addr = normalize_address(admin or sender.address)
    coordinator_addr = normalize_address(coordinator)
    guardian_addr = normalize_address(guardian)
    if guardian_addr == coordinator_addr:
        raise ChainError("the guardian must be another key than the coordinator's")

    def send(art: Any, *args: Any) -> Any:
        factory = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        return sender.send(factory.constructor(*args), f"deploy {art.name}")

    # Settlement first: NodeRegistry reads its jobs (submitter, open) to slash for them.
    settled = send(settlement_art, admin_addr, coordinator_addr, guardian_addr, challenge_window)
    settlement_addr = normalize_address(settled.contract_address or "")
    registered = send(
        registry_art,
        admin_addr,
        coordinator_addr,
        guardian_addr,
        settlement_addr,
        min_stake,
        unbonding_delay,
        slash_delay,
        max_slash_bps,
    )
    registry_addr = normalize_address(registered.contract_address or "")
    deployment = Deployment(
        chain_id=sender.chain_id,
        deploy_block=settled.block,
        deployer=normalize_address(sender.address),
        node_registry=registry_addr,
        settlement=settlement_addr,
        admin=admin_addr,
        coordinator=coordinator_addr,
        guardian=guardian_addr,
        min_stake=min_stake,
        unbonding_delay=unbonding_delay,
        challenge_window=challenge_window,
        slash_delay=slash_delay,
        max_slash_bps=max_slash_bps,
        compiler=registry_art.compiler,
        source_hash=registry_art.source_hash,
    )
    if out is not None:
        deployment.save(out)
    return deployment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tensorgrid.chain.deploy")
    parser.add_argument("--rpc", required=True, help="JSON-RPC URL, e.g. http://127.0.0.1:8545")
    parser.add_argument("--key-env", default="TENSORGRID_DEPLOYER_KEY", help="env var holding the deployer key")
    parser.add_argument("--coordinator", required=True, help="address granted COORDINATOR_ROLE")
    parser.add_argument("--guardian", required=True, help="address granted GUARDIAN_ROLE (not the coordinator)")
    parser.add_argument("--admin", default=None, help="role admin (default: the deployer)")
    parser.add_argument("--min-stake-wei", type=int, required=True)
    parser.add_argument("--unbonding-delay", type=int, default=7 * 24 * 3600, help="seconds")
    parser.add_argument("--challenge-window", type=int, default=3600, help="seconds")
    parser.add_argument("--slash-delay", type=int, default=DEFAULT_SLASH_DELAY, help="seconds to veto a slash")
    parser.add_argument("--max-slash-bps", type=int, default=DEFAULT_MAX_SLASH_BPS, help="cap per slash, of stake")
    parser.add_argument("--out", required=True, help="deployments JSON file to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    key = os.environ.get(args.key_env)
    if not key:
        print(f"error: set {args.key_env} to the deployer's private key", file=sys.stderr)
        return 2
    try:
        deployment = deploy(
            args.rpc,
            key,
            coordinator=args.coordinator,
            guardian=args.guardian,
            admin=args.admin,
            min_stake=args.min_stake_wei,
            unbonding_delay=args.unbonding_delay,
            challenge_window=args.challenge_window,
            slash_delay=args.slash_delay,
            max_slash_bps=args.max_slash_bps,
            out=args.out,
        )
    except ChainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(deployment.to_json(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
