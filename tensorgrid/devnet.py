"""A local devnet: anvil, the contracts, a coordinator and N funded, staked nodes on 127.0.0.1.

    tensorgrid devnet up [--nodes 2]   # seconds; prints the addresses and env to use
    tensorgrid devnet status
    tensorgrid devnet down             # stops exactly what `up` started, by pid

The demo and the chain integration tests start the same thing in-process (start_chain_grid).
Accounts (anvil's funded dev keys): 0 deploys and administers, 1 is the coordinator,
2… are the nodes, the third from last is the guardian (vetoes slashes, revokes roots), the
last one is the submitter.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tensorgrid import processes
from tensorgrid.chain.anvil import Anvil, start_anvil
from tensorgrid.chain.deploy import Deployment, deploy
from tensorgrid.crypto import Signer, load_or_create_key_file, write_key_file
from tensorgrid.errors import TensorGridError
from tensorgrid.localca import make_local_ca
from tensorgrid.localgrid import LocalGrid, free_port  # noqa: F401 -- free_port: also this module's
from tensorgrid.sandbox import launch

ETH = 10**18
STATE_FILE = "devnet.json"


@dataclass
class ChainGrid:
    grid: LocalGrid
    anvil: Anvil
    deployment: Deployment
    deployment_path: Path
    node_keys: list[str]
    submitter_key: str
    guardian_key: str = ""

    @property
    def chain_args(self) -> tuple[str, ...]:
        return ("--chain-rpc", self.anvil.rpc_url, "--deployment", str(self.deployment_path))

    def stop(self) -> None:
        self.grid.stop()
        self.anvil.stop()


def deploy_devnet(
    anvil: Anvil,
    root: Path,
    coordinator_dir: Path,
    *,
    challenge_window_s: int = 1,
    min_stake: int = ETH,
    slash_delay_s: int = 10,
) -> tuple[Deployment, Path]:
    """Deploy the contracts on `anvil` with the devnet's roles (account 0 deploys, 1 is the
    coordinator, the third from last the guardian), write root/deployments.json, and give the
    coordinator account's key to a coordinator whose --data-dir is coordinator_dir (and its replicas)."""
    coordinator = Signer.from_hex(anvil.keys[1])
    path = root / "deployments.json"
    deployment = deploy(
        anvil.rpc_url,
        anvil.keys[0],
        coordinator=coordinator.address,
        guardian=anvil.addresses[-3],
        min_stake=min_stake,
        unbonding_delay=60,
        challenge_window=challenge_window_s,
        slash_delay=slash_delay_s,
        out=path,
    )
    write_key_file(coordinator_dir / "coordinator.key", coordinator)
    return deployment, path


def start_chain_grid(
    root: Path,
    nodes: int = 2,
    *,
    epoch_s: float = 2.0,
    challenge_window_s: int = 1,
    min_stake: int = ETH,
    slash_delay_s: int = 10,
    detached: bool = False,
    coordinator_args: tuple[str, ...] = (),
    node_args: tuple[str, ...] = ("--device", "cpu", "--threads", "1"),
    tls: bool = False,
) -> ChainGrid:
    """Start anvil, deploy, then a coordinator and `nodes` nodes that stake themselves.
    tls: a fresh local CA in root/tls; the coordinator serves TLS and the nodes verify it."""
    root.mkdir(parents=True, exist_ok=True)
    # A long-lived devnet mines a block every second, so chain time (deadlines, challenge
    # windows) moves on its own, as on a real chain; tests mine on demand, for speed.
    anvil = start_anvil(
        accounts=max(10, nodes + 5),
        detached_in=root / "anvil" if detached else None,
        extra_args=("--block-time", "1") if detached else (),
    )
    try:
        keys = anvil.keys
        grid = LocalGrid(root / "grid", tls=make_local_ca(root / "tls") if tls else None, detached=detached)
        deployment, deployment_path = deploy_devnet(
            anvil,
            root,
            grid.root / "coordinator",
            challenge_window_s=challenge_window_s,
            min_stake=min_stake,
            slash_delay_s=slash_delay_s,
        )
        chain = ("--chain-rpc", anvil.rpc_url, "--deployment", str(deployment_path))
        # A long-lived devnet names its ports on the command line, so a coordinator restarted with
        # that same command line comes back where its nodes and clients look for it.
        port = free_port() if detached else 0
        stable = ("--bulk-listen", f"127.0.0.1:{free_port()}") if detached else ()
        grid.start_coordinator(*chain, "--epoch-seconds", str(epoch_s), *stable, *coordinator_args, port=port)
        node_keys = keys[2 : 2 + nodes]
        for i, key in enumerate(node_keys):
            grid.start_node(f"node{i}", *chain, *node_args, private_key=key)
    except BaseException:
        if not detached:
            anvil.stop()
        raise
    return ChainGrid(grid, anvil, deployment, deployment_path, node_keys, keys[-1], keys[-3])


def up(root: Path, nodes: int, epoch_s: float) -> int:
    root = root.resolve()  # every process names it absolutely: how status and down find them all
    if (root / STATE_FILE).exists() and _running(root):
        raise TensorGridError(f"a devnet is already up in {root}: `tensorgrid devnet down` first")
    # A new chain needs a new coordinator database (epochs and nonces belong to one chain):
    # what a previous devnet left behind goes, logs included.
    for leftover in ("grid", "anvil", "tls", "zygote"):
        shutil.rmtree(root / leftover, ignore_errors=True)
    started = time.monotonic()
    zygote = _start_zygote(root)
    cg = start_chain_grid(root, nodes, epoch_s=epoch_s, challenge_window_s=5, detached=True, tls=True)
    assert cg.grid.ca_cert is not None
    submitter_key = root / "submitter.key"
    submitter_key.unlink(missing_ok=True)  # a previous devnet's
    write_key_file(submitter_key, Signer.from_hex(cg.submitter_key))
    info = {
        "rpc": cg.anvil.rpc_url,
        "coordinator": cg.grid.target,
        "deployment": str(cg.deployment_path.resolve()),
        "submitter_key": str(submitter_key.resolve()),
        "ca_cert": str(cg.grid.ca_cert.resolve()),
        "node_addresses": [Signer.from_hex(k).address for k in cg.node_keys],
        "procs": [p.to_dict() for p in started_procs(cg, zygote)],
        "logs": str(cg.grid.root.resolve()),
    }
    (root / STATE_FILE).write_text(json.dumps(info, indent=2))
    print(f"devnet up in {time.monotonic() - started:.1f}s ({root})")
    print(f"  chain        {cg.anvil.rpc_url} (chain id {cg.deployment.chain_id})")
    print(f"  contracts    NodeRegistry {cg.deployment.node_registry}, Settlement {cg.deployment.settlement}")
    print(f"  coordinator  {cg.grid.target} ({cg.deployment.coordinator}), TLS with a local CA")
    print(f"  CA           {info['ca_cert']} (made for this devnet; the certificate names 127.0.0.1, localhost)")
    for address in info["node_addresses"]:
        print(f"  node         {address}")
    print("use it with:")
    print(f"  export TENSORGRID_COORDINATOR={cg.grid.target} TENSORGRID_CHAIN_RPC={cg.anvil.rpc_url} \\")
    print(f"         TENSORGRID_DEPLOYMENT={info['deployment']} TENSORGRID_KEY={info['submitter_key']} \\")
    print(f"         TENSORGRID_CA_CERT={info['ca_cert']}")
    return 0


def status(root: Path) -> int:
    info = _state(root)
    from tensorgrid.chain.client import ChainClient
    from tensorgrid.chain.deploy import load_deployment
    from tensorgrid.client import Client

    procs = _running(root.resolve())
    print(f"processes    {len(procs)} running ({', '.join(str(p.pid) for p in procs) or 'none'})")
    chain = ChainClient.connect(info["rpc"], load_deployment(info["deployment"]), Signer.generate().private_key)
    print(
        f"chain        {info['rpc']} at block {chain.w3.eth.block_number}, escrow and claims hold "
        f"{chain.owed() / ETH:.4f} ETH"
    )
    submitter, _ = load_or_create_key_file(info["submitter_key"])
    with Client(
        info["coordinator"], submitter, ca_cert=info.get("ca_cert")
    ) as client:  # jobs are visible to their submitter only
        jobs = client.jobs(limit=1000)
        print(f"coordinator  {info['coordinator']}: {len(jobs)} jobs of the devnet's submitter {submitter.address}")
        for n in client.nodes():
            print(
                f"  node {n.address}  stake {chain.stake_of(n.address) / ETH:.2f} ETH  done {n.completed}  "
                f"claimed {chain.claimed(n.address) / ETH:.6f} ETH"
            )
    return 0


def down(root: Path, timeout: float = 15.0) -> int:
    """Stop every process of the devnet: those `up` started (by pid and start time, never a
    stranger that reused a pid) and any that name its directory, such as a coordinator the
    operator restarted by hand."""
    info = _state(root)
    stopped = processes.stop(_running(root.resolve()), timeout)
    (root / STATE_FILE).unlink()
    print(f"devnet down: stopped {stopped} processes (logs kept in {info['logs']} until the next `up`)")
    return 0


def _start_zygote(root: Path) -> int:
    """One zygote (tensorgrid.sandbox.zygote) for the devnet's coordinator and nodes: exported to
    the processes started after it, which fork their sandboxed children from it (an operator's
    TENSORGRID_SANDBOX_ZYGOTE, `off` included, wins). Its pid; 0 when none was started."""
    if os.environ.get(launch.ZYGOTE_ENV):
        return 0
    path = root / "zygote" / "sock"
    log = (root / "zygote.log").open("ab")
    proc = launch.start_zygote(path, stderr=log)  # detached; `down` stops it (its command line names root)
    os.environ[launch.ZYGOTE_ENV] = str(path)
    return proc.pid


def started_procs(cg: ChainGrid, zygote: int = 0) -> list[processes.ProcessId]:
    pids = [cg.anvil.process.pid, *(p.popen.pid for p in cg.grid.procs), *([zygote] if zygote else [])]
    return [p for p in map(processes.identify, pids) if p is not None]


def _running(root: Path) -> list[processes.ProcessId]:
    """The devnet's live processes: the recorded ones still alive, and any naming its directory."""
    try:
        recorded = [processes.ProcessId.from_dict(d) for d in _state(root).get("procs", [])]
    except (TensorGridError, ValueError, KeyError):
        recorded = []
    found = {p.pid: p for p in recorded if processes.alive(p)}
    for p in processes.naming(root):
        found.setdefault(p.pid, p)
    return sorted(found.values(), key=lambda p: p.start, reverse=True)  # nodes, coordinator, then anvil


def _state(root: Path) -> dict:  # type: ignore[type-arg]
    path = root / STATE_FILE
    if not path.exists():
        raise TensorGridError(f"no devnet in {root}: `tensorgrid devnet up` first")
    return json.loads(path.read_text())  # type: ignore[no-any-return]
