"""Build drift, artifacts, the deployments file, and the anvil helper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from web3 import Web3

from tensorgrid.chain import Anvil, ChainError, load_artifact, load_deployment, start_anvil
from tensorgrid.chain.build import drift
from tensorgrid.chain.deploy import deploy
from tensorgrid.chain.deploy import main as deploy_main
from tests.chain.conftest import Chain


def test_committed_artifacts_match_a_fresh_compile() -> None:
    assert drift() == [], "run `python -m tensorgrid.chain.build` and commit tensorgrid/chain/compiled"


def test_artifacts_name_their_compiler() -> None:
    for name in ("NodeRegistry", "Settlement", "test/ReentrantReceiver"):
        art = load_artifact(name)
        assert art.compiler.startswith("solc 0.8.37+")
        assert art.evm_version == "cancun"
        assert art.bytecode.startswith("0x") and len(art.bytecode) > 100
        assert len(art.source_hash) == 64
    with pytest.raises(ChainError):
        load_artifact("NoSuchContract")


def test_deployments_file_round_trips(anvil: Anvil, tmp_path: Path) -> None:
    out = tmp_path / "deployments.json"
    deployment = deploy(
        anvil.rpc_url, anvil.keys[0], coordinator=anvil.addresses[1], guardian=anvil.addresses[2], min_stake=5, out=out
    )
    data = json.loads(out.read_text())
    assert data["contracts"] == {"NodeRegistry": deployment.node_registry, "Settlement": deployment.settlement}
    assert data["params"]["minStakeWei"] == "5"
    assert data["eip712"]["verifyingContract"] == deployment.node_registry
    assert load_deployment(out) == deployment
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    assert w3.eth.get_code(Web3.to_checksum_address(deployment.settlement)) != b""
    first_tx = w3.eth.get_block(deployment.deploy_block)["transactions"][0]
    assert isinstance(first_tx, bytes)
    # Settlement first: NodeRegistry is built on it (it reads a job's submitter to slash for it)
    assert w3.eth.get_transaction_receipt(first_tx)["contractAddress"] == deployment.settlement
    assert data["roles"]["guardian"] == deployment.guardian
    registry = w3.eth.contract(
        address=Web3.to_checksum_address(deployment.node_registry), abi=load_artifact("NodeRegistry").abi
    )
    assert registry.functions.jobBook().call() == deployment.settlement
    assert registry.functions.slashDelay().call() == deployment.slash_delay
    with pytest.raises(ChainError):
        load_deployment(tmp_path / "missing.json")


def test_deploy_command_line(anvil: Anvil, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "d.json"
    args = ["--rpc", anvil.rpc_url, "--coordinator", anvil.addresses[1], "--guardian", anvil.addresses[2],
            "--min-stake-wei", "7", "--out", str(out)]  # fmt: skip
    monkeypatch.delenv("TENSORGRID_DEPLOYER_KEY", raising=False)
    assert deploy_main(args) == 2
    monkeypatch.setenv("TENSORGRID_DEPLOYER_KEY", anvil.keys[0])
    assert deploy_main(args) == 0
    assert load_deployment(out).min_stake == 7
    same = [anvil.addresses[1] if a == anvil.addresses[2] else a for a in args]
    assert deploy_main(same) == 1  # a guardian that is the coordinator checks nothing


def test_chain_domain_matches_the_contract(chain: Chain) -> None:
    fields = chain.admin.registry.functions.eip712Domain().call()
    domain = chain.deployment.domain
    assert (fields[1], fields[2], fields[3], fields[4]) == (
        domain.name,
        domain.version,
        domain.chain_id,
        domain.verifying_contract,
    )


def test_anvil_starts_on_a_free_port_and_stops() -> None:
    with start_anvil(accounts=2) as node:
        assert node.rpc_url.startswith("http://127.0.0.1:")
        assert len(node.keys) == len(node.addresses) == 2
        assert Web3(Web3.HTTPProvider(node.rpc_url)).eth.get_balance(Web3.to_checksum_address(node.addresses[1])) > 0
        workdir = node.workdir
    assert node.process.poll() is not None
    assert not workdir.exists()
