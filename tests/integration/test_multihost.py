"""Multi-host: two coordinator replicas, PostgreSQL, a chain and three nodes on hosts of their
own, over TLS, each node behind a WAN-like link (50 ms each way, a bandwidth cap, connections
reset now and then); every job is paid through an escrow.

The hosts are network namespaces joined by a bridge (tensorgrid.testing.netns): each replica in
one, each node in one, and the root namespace — where the test runs and PostgreSQL and anvil
listen on 127.0.0.1 — as the database and chain host, reached from the others through forwarders
on the root namespace's bridge address. The replicas share the database and a data directory
(the blob store and the coordinator's key), as replicas on separate machines share a network
file system. A node dials 127.0.0.1:7070 and 127.0.0.1:7071 in its namespace (`--coordinator`,
first the first), proxies there (tensorgrid.testing.netsim) carry them to the replicas'
addresses over one WAN link each, and TLS verifies the replicas' certificate for 127.0.0.1 as on
any grid; the submitter dials the replicas' 198.18 addresses directly, which their certificate
names too. Skipped, saying why, only where network namespaces cannot be made (not root, or
`ip netns` failing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import torch

from tensorgrid.chain.anvil import Anvil, start_anvil
from tensorgrid.chain.client import ChainClient, JobStatus
from tensorgrid.chain.deploy import Deployment
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.devnet import deploy_devnet
from tensorgrid.localca import make_local_ca
from tensorgrid.localgrid import COORDINATOR, LocalGrid, Proc
from tensorgrid.testing.netns import Network, unavailable
from tensorgrid.testing.netsim import Link, ProxyThread
from tensorgrid.training.local import run_local
from tensorgrid.types import JobState
from tensorgrid.workloads.tensorfile import load_tensors
from tests.integration.conftest import BATCH, FAST, Assets, TrainingDigits, node_args, wait_for
from tests.integration.payments import credits, earned, settled_once
from tests.integration.test_inference import assert_matches_local

# One grid for the module (three namespaced nodes cost a lot to start): the cut test restores its
# link, the kill test restarts the replica it killed.
pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow, pytest.mark.xdist_group("multihost")]
NODES = ("node1", "node2", "node3")
REPLICAS = ("coordinator", "coordinator2")  # their hosts; the first is the one nodes dial first
GRPC, PG = 7070, 5432
REWARD = 10**15
GAS = 10**16  # far above what funding and refunding one escrow costs on anvil
# Each node's link to each replica: 50 ms each way, 4 MB/s (32 Mbit/s) each way, a connection
# reset every 10 s on average; seeded per node and replica.
WAN = Link(delay_s=0.05, rate_bytes_s=4_000_000, reset_mean_s=10.0)


@dataclass
class WanGrid:
    grid: LocalGrid
    net: Network
    links: dict[str, ProxyThread]  # a node's links: one proxy per replica, in REPLICAS order
    db_url: str  # the job database as the test reaches it (127.0.0.1)
    anvil: Anvil
    deployment: Deployment
    node_keys: list[str]  # in NODES order
    submitter_key: str

    def address(self, node: str) -> str:
        return "0x" + json.loads((self.grid.root / node / "key.json").read_text())["address"].lower().removeprefix("0x")

    def resets(self) -> int:
        return sum(link.resets for link in self.links.values())

    def client(self) -> Client:
        """The submitter's client: both replicas, and the chain to fund escrows from."""
        chain = ChainClient.connect(self.anvil.rpc_url, self.deployment, self.submitter_key)
        return self.grid.client(Signer.from_hex(self.submitter_key), chain=chain)

    def carried(self) -> list[list[int]]:
        """Bytes each node's link to each replica has carried so far."""
        return [[proxy.carried for proxy in self.links[node].proxies] for node in NODES]

    def replica(self, index: int) -> Proc:
        """The process of REPLICAS[index]."""
        name = COORDINATOR if index == 0 else f"{COORDINATOR}-{index + 1}"
        return next(p for p in self.grid.procs if p.name == name)


@pytest.fixture(scope="module")
def wan_grid(tmp_path_factory: pytest.TempPathFactory, pg_module_url: str) -> Iterator[WanGrid]:
    tmp_path, pg_url = tmp_path_factory.mktemp("wan"), pg_module_url
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    net = Network([*REPLICAS, *NODES])
    threads: list[ProxyThread] = []
    grid: LocalGrid | None = None
    anvil: Anvil | None = None
    try:
        net.open()
        anvil = start_anvil()
        deployment, deployment_path = deploy_devnet(anvil, tmp_path, tmp_path / "grid" / "coordinator")
        rpc_port = int(anvil.rpc_url.rsplit(":", 1)[1])
        host_side = ProxyThread()  # the root namespace's bridge address → PostgreSQL and anvil on 127.0.0.1
        threads.append(host_side)
        host_side.add(net.root_address, PG, "127.0.0.1", PG, Link())
        host_side.add(net.root_address, rpc_port, "127.0.0.1", rpc_port, Link())
        chain = ("--chain-rpc", f"http://{net.root_address}:{rpc_port}", "--deployment", str(deployment_path))
        grid = _start_replicas(tmp_path, net, pg_url.replace("@127.0.0.1:", f"@{net.root_address}:"), chain)
        node_keys = anvil.keys[2 : 2 + len(NODES)]
        links = _start_nodes(grid, net, chain, node_keys)
        threads += links.values()
        grid.wait_for_nodes(len(NODES), timeout=300)
        yield WanGrid(grid, net, links, pg_url, anvil, deployment, node_keys, anvil.keys[-1])
    finally:
        if grid is not None:
            grid.stop(timeout=10)
        for thread in threads:
            thread.stop()
        net.close()
        if anvil is not None:
            anvil.stop()


def _start_replicas(root: Path, net: Network, db_url: str, chain: tuple[str, ...]) -> LocalGrid:
    """Both replicas, each on port GRPC of its own host, one certificate naming both addresses."""
    hosts = [net.addresses[r] for r in REPLICAS]
    tls = make_local_ca(root / "tls", extra_ips=hosts)
    settle = ("--epoch-seconds", "1")
    grid = LocalGrid(root / "grid", coordinator_args=[*FAST, *chain, *settle], tls=tls, host=hosts[0])
    # both start at once (the schema is made once: replicas migrate under a lock)
    grid.start_coordinator(port=GRPC, database_url=db_url, prefix=net.exec_prefix(REPLICAS[0]), wait=False)
    grid.start_replica(db_url, host=hosts[1], port=GRPC, prefix=net.exec_prefix(REPLICAS[1]))
    grid.await_coordinator()
    return grid


def _start_nodes(grid: LocalGrid, net: Network, chain: tuple[str, ...], keys: list[str]) -> dict[str, ProxyThread]:
    """Each node in its namespace, staked on chain, dialling the replicas through its links."""
    links: dict[str, ProxyThread] = {}
    for i, node in enumerate(NODES):
        links[node] = link = ProxyThread(net.namespaces[node])
        # a node moves every byte over gRPC (the bulk port is the submitter's): one proxy per replica
        for r, replica in enumerate(REPLICAS):
            link.add("127.0.0.1", GRPC + r, net.addresses[replica], GRPC, Link(**{**WAN.__dict__, "seed": 10 * r + i}))
        grid.start_node(
            node,
            *chain,
            *node_args(),
            prefix=net.exec_prefix(node),
            private_key=keys[i],
            coordinator=",".join(f"127.0.0.1:{GRPC + r}" for r in range(len(REPLICAS))),
        )
    return links


def _paid_inference(wan_grid: WanGrid, assets: Assets, tmp: Path, shard_rows: int = 500) -> str:
    """Run a paid inference job to its end; its result equals local inference. Returns its id."""
    with wan_grid.client() as client:
        job = client.submit_inference(
            assets.model,
            assets.inputs,
            shard_rows=shard_rows,
            batch_size=BATCH,
            device="cpu",
            reward_per_task_wei=REWARD,
        )
        final = client.wait(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        client.result(job.job_id, tmp / "out.safetensors")
    assert_matches_local(tmp / "out.safetensors", assets)
    return job.job_id


def _training_settings() -> dict[str, Any]:
    # every worker every round (quorum 1.0): the grid's weights are the local run's
    return dict(rounds=3, workers_per_round=len(NODES), quorum=1.0, device="cpu", seed=0)


@pytest.mark.timeout(900)
def test_inference_and_training_over_the_wan_match_local_runs(
    wan_grid: WanGrid, digits: Assets, digits_training: TrainingDigits, tmp_path: Path
) -> None:
    _paid_inference(wan_grid, digits, tmp_path)  # checks the result equals local inference
    d, settings = digits_training, _training_settings()
    with wan_grid.client() as client:
        job = client.submit_training(d.train, d.dataset, eval_program=d.eval, reward_per_task_wei=REWARD, **settings)
        final = client.wait(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        weights, _ = client.training_result(job.job_id, tmp_path / "weights.safetensors", tmp_path / "eval.pt2")
        metrics = client.round_metrics(job.job_id)
    assert [m["workers"] for m in metrics] == [len(NODES)] * settings["rounds"]
    spec = client_spec(settings, d)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_local(spec, d.train, d.dataset, tmp_path / "local", eval_program=d.eval)
    finally:
        torch.set_num_threads(threads)
    got, want = load_tensors(weights), load_tensors(local.weights_path)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
    print(f"connections reset by the links: {wan_grid.resets()}")
    assert wan_grid.resets() >= 1  # the links did reset connections, and the jobs went through


def client_spec(settings: dict[str, Any], d: TrainingDigits) -> Any:
    """The TrainingSpec the SDK built for these settings (blob refs do not change the run)."""
    from tensorgrid.spec import TrainingSpec
    from tensorgrid.types import BlobRef

    return TrainingSpec(train_program=BlobRef("0" * 64, 0), dataset=BlobRef("0" * 64, 0), **settings)


def _leased_by(db_url: str, address: str, job_id: str) -> list[tuple[str, int]]:
    with psycopg.connect(db_url, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT task_id, attempt FROM tasks WHERE job_id = %s AND state = 'leased' AND lower(node) = %s",
            (job_id, address),
        ).fetchall()
    return [(str(t), int(a)) for t, a in rows]


def _restore(wan_grid: WanGrid, node: str, timeout: float = 120) -> None:
    """Bring a cut link back and wait until its node heartbeats again (the grid is the module's)."""
    since_ms = int(time.time() * 1000)
    wan_grid.links[node].restore()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(wan_grid.db_url, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT last_seen_ms FROM nodes WHERE lower(address) = %s", (wan_grid.address(node),)
            ).fetchone()
        if row is not None and int(row[0]) > since_ms:
            return
        time.sleep(0.2)
    raise AssertionError(f"{node} did not come back within {timeout} s of its link's return")


@pytest.mark.timeout(900)
def test_a_node_whose_link_is_cut_mid_task_has_its_task_reissued(
    wan_grid: WanGrid, slow_digits: Assets, tmp_path: Path
) -> None:
    victim = "node1"
    address = wan_grid.address(victim)
    with wan_grid.client() as client:
        job = client.submit_inference(
            slow_digits.model,
            slow_digits.inputs,
            shard_rows=2000,
            batch_size=BATCH,
            device="cpu",
            reward_per_task_wei=REWARD,
        )
        deadline, held = time.monotonic() + 120, list[tuple[str, int]]()
        while not held and time.monotonic() < deadline:
            held = _leased_by(wan_grid.db_url, address, job.job_id)
            time.sleep(0.02)
        assert held, f"{victim} never held a task of the job"
        wan_grid.links[victim].cut()
        try:
            kinds = [e.kind for e in client.watch(job.job_id)]
            final = client.job(job.job_id)
            assert final.state == JobState.SUCCEEDED, final.error
            client.result(job.job_id, tmp_path / "out.safetensors")
        finally:
            _restore(wan_grid, victim)
    assert "reissued" in kinds
    task_id, attempt = held[0]
    with psycopg.connect(wan_grid.db_url, connect_timeout=5) as conn:
        node, done_attempt = conn.execute(
            "SELECT lower(node), attempt FROM tasks WHERE task_id = %s AND state = 'done'", (task_id,)
        ).fetchone() or ("", -1)
    assert node != address and done_attempt > attempt, (node, done_attempt, attempt)
    assert_matches_local(tmp_path / "out.safetensors", slow_digits)


def _replica_in_use(wan_grid: WanGrid, client: Client, job_id: str, done: int, timeout: float = 300) -> int:
    """Once `done` tasks of the job are done: the replica (its index in REPLICAS) the nodes are
    working through, the one their links carried the most bytes to over the last second (a node
    stays with one replica until a call fails; its other channel only sends keepalives)."""
    seen: list[tuple[float, list[list[int]]]] = [(time.monotonic(), wan_grid.carried())]
    deadline = time.monotonic() + timeout
    while client.job(job_id).tasks_done < done:
        assert time.monotonic() < deadline, f"fewer than {done} tasks of the job done after {timeout} s"
        time.sleep(0.1)
        seen.append((time.monotonic(), wan_grid.carried()))
    since = time.monotonic() - 1.0
    then = next((c for t, c in reversed(seen) if t <= since), seen[0][1])  # the job's start, if sooner
    now = wan_grid.carried()
    moved = [sum(now[n][r] - then[n][r] for n in range(len(NODES))) for r in range(len(REPLICAS))]
    busiest = max(range(len(REPLICAS)), key=moved.__getitem__)
    assert moved[busiest] > 0, "no node talked to either replica while the job ran"
    return busiest


def _accepted_once(db_url: str, job_id: str) -> dict[str, tuple[str, int]]:
    """Each of the job's own tasks (not its checks): its state and how many results were accepted for it."""
    with psycopg.connect(db_url, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT t.task_id, t.state, count(r.task_id) FROM tasks t LEFT JOIN receipts r ON r.task_id = t.task_id"
            " WHERE t.job_id = %s AND t.kind <> 'spotcheck' GROUP BY t.task_id, t.state",
            (job_id,),
        ).fetchall()
    return {str(t): (str(state), int(n)) for t, state, n in rows}


def _earlier_escrows_closed(wan_grid: WanGrid, client: Client) -> None:
    """Until every job the module's other tests ran has its escrow closed on chain."""
    with psycopg.connect(wan_grid.db_url, connect_timeout=5) as conn:
        jobs = [str(job_id) for (job_id,) in conn.execute("SELECT job_id FROM jobs").fetchall()]
    for job_id in jobs:
        wait_for(lambda j=job_id: client.escrow(j).status != JobStatus.OPEN, 180, f"job {job_id}'s escrow to close")


@pytest.mark.timeout(900)
def test_killing_the_replica_the_nodes_use_mid_job_loses_nothing_and_pays_once(
    wan_grid: WanGrid, digits: Assets, tmp_path: Path
) -> None:
    """The replica the nodes work through is SIGKILLed mid-job (leases held, results in flight,
    perhaps the outbox's lock); the other, on its own host, finishes the job: every task accepted
    once, the result the local one, every task credited once and the escrow charged for exactly that."""
    with wan_grid.client() as client:
        assert client.chain is not None
        _earlier_escrows_closed(wan_grid, client)  # their refunds and earnings are not this job's
        before = earned(client, wan_grid.node_keys)
        balance = client.chain.balance()
        job = client.submit_inference(
            digits.model,
            digits.inputs,
            shard_rows=100,  # 30 short tasks: round trips, not compute, are most of their time
            batch_size=BATCH,
            device="cpu",
            reward_per_task_wei=REWARD,
        )
        victim = _replica_in_use(wan_grid, client, job.job_id, done=3)
        proc = wan_grid.replica(victim)
        wan_grid.grid.kill_proc(proc)  # SIGKILL to its process group, whose id is its pid
        restarting, restarted = ThreadPoolExecutor(1), None
        try:
            assert client.job(job.job_id).tasks_done < job.tasks_total  # killed mid-job
            final = client.wait(job.job_id)
            assert final.state == JobState.SUCCEEDED, final.error
            # The grid is the module's: whole again for later tests (started while payments settle).
            restarted = restarting.submit(wan_grid.grid.restart, proc)
            assert client.target == wan_grid.grid.targets.split(",")[1 - victim]  # the replica left
            assert_matches_local(client.result(job.job_id, tmp_path / "y.safetensors"), digits)
            shards = _accepted_once(wan_grid.db_url, job.job_id)
            assert len(shards) == final.tasks_done == final.tasks_total
            assert set(shards.values()) == {("done", 1)}  # every task accepted exactly once
            counts, credited = credits(wan_grid.db_url, job.job_id)
            assert counts and set(counts.values()) == {1}  # every credited task (and check) once
            v = final.verification  # each shard once, and the fee's wins (checkers', decoys')
            assert v is not None and credited == REWARD * (final.tasks_total - v.decoys) + v.fee_paid_wei
            charged = settled_once(
                wan_grid.anvil, wan_grid.deployment, wan_grid.node_keys, client, [job.job_id], before
            )
            assert charged == credited
            assert 0 <= balance - client.chain.balance() - credited < GAS  # the rest came back
        finally:
            if restarted is None:
                restarted = restarting.submit(wan_grid.grid.restart, proc)
            restarting.shutdown()
            restarted.result()
    wan_grid.grid.check_running()  # every node kept running
    signer = Signer.from_hex(wan_grid.submitter_key)
    for target in wan_grid.grid.targets.split(","):  # each replica, over TLS for its own address
        with Client(target, signer, ca_cert=wan_grid.grid.ca_cert) as direct:
            assert direct.job(job.job_id).state == JobState.SUCCEEDED
