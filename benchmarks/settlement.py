"""Settlement: chain gas per paid task with epoch Merkle roots, next to one ETH transfer per
task measured in the same run on the same anvil. Goal: ≤ 1,000 gas per task at 1,000
tasks per epoch.

Per size, on a fresh deployment: tasks are spread round-robin over the nodes and belong to
jobs of JOB_TASKS tasks; one postRoot charges every job (its accepted task count, at the job's
reward per task) and posts the root, then every node claims once. gas per task = (postRoot +
all claims) / tasks. Epoch 1 is a node's first claim (its `claimed` slot goes from zero to
non-zero, the costliest case); epoch 2 repeats the same work and shows the steady state.
Each job's escrow is locked first, as the coordinator does at a job's first lease: that one
tx per job is reported beside the epochs (lock_gas_per_job, first_epoch_gas_per_task_with_locks).

    python -m benchmarks.settlement [--nodes 10] [--sizes 10,100,1000]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from web3 import Web3
from web3.types import Wei

from benchmarks._common import emit
from tensorgrid.chain import Anvil, ChainClient, EarningsTree, start_anvil
from tensorgrid.chain.deploy import deploy
from tensorgrid.chain.encoding import to_bytes32

PRICE = 10**15  # wei per task
JOB_TASKS = 100
WINDOW = 60
GOAL = 1000


def settle_epochs(anvil: Anvil, tasks: int, nodes: int) -> dict[str, Any]:
    keys = anvil.keys
    deployment = deploy(
        anvil.rpc_url, keys[0], coordinator=anvil.addresses[1], guardian=anvil.addresses[-1], min_stake=1,
        challenge_window=WINDOW,
    )  # fmt: skip
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    coordinator = ChainClient(w3, deployment, keys[1])
    submitter = ChainClient(w3, deployment, keys[2])
    workers = [ChainClient(w3, deployment, k) for k in keys[3 : 3 + nodes]]
    jobs = [to_bytes32(Web3.keccak(text=f"job-{tasks}-{j}")) for j in range((tasks + JOB_TASKS - 1) // JOB_TASKS)]
    per_job = [min(JOB_TASKS, tasks - j * JOB_TASKS) for j in range(len(jobs))]  # tasks per job and epoch
    deadline = submitter.chain_time() + 10**6
    for job, count in zip(jobs, per_job, strict=True):
        submitter.create_job(job, bytes(32), deadline, 2 * count * PRICE, reward_per_task=PRICE)  # two epochs

    # No free work: the coordinator locks each job's escrow at its first lease, one tx per job.
    lock_gas = sum(coordinator.lock_job(job).gas_used for job in jobs)
    earnings = {w.address: 0 for w in workers}
    out: dict[str, Any] = {"tasks": tasks, "jobs": len(jobs), "nodes": nodes, "lock_gas_per_job": lock_gas // len(jobs)}
    for epoch in (1, 2):
        for t in range(tasks):
            earnings[workers[t % nodes].address] += PRICE
        tree = EarningsTree({a: v for a, v in earnings.items() if v})
        post = coordinator.post_root(epoch, tree.root, list(zip(jobs, per_job, strict=True)))
        anvil.advance_time(WINDOW)
        claims = [w.claim(tree.earnings[w.address], tree.proof(w.address)).gas_used
                  for w in workers if w.address in tree.earnings]  # fmt: skip
        assert coordinator.owed() == coordinator.balance(deployment.settlement)
        total = post.gas_used + sum(claims)
        out[f"epoch{epoch}"] = {
            "post_root_gas": post.gas_used,
            "claims": len(claims),
            "claim_gas_mean": sum(claims) // len(claims),
            "gas_per_task": round(total / tasks, 1),
        }
    out["first_epoch_gas_per_task_with_locks"] = round(out["epoch1"]["gas_per_task"] + lock_gas / tasks, 1)
    return out


def transfer_baseline(anvil: Anvil, tasks: int, nodes: int) -> float:
    """Gas per task when each task is paid by its own ETH transfer (unlocked dev account)."""
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    payer = Web3.to_checksum_address(anvil.addresses[-1])
    payees = [Web3.to_checksum_address(a) for a in anvil.addresses[3 : 3 + nodes]]
    hashes = [
        w3.eth.send_transaction({"from": payer, "to": payees[t % nodes], "value": Wei(PRICE)}) for t in range(tasks)
    ]
    gas = sum(int(w3.eth.wait_for_transaction_receipt(h, poll_latency=0.01)["gasUsed"]) for h in hashes)
    return gas / tasks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.settlement")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--sizes", default="10,100,1000")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with start_anvil(accounts=args.nodes + 4, balance_eth=10**6) as anvil:
        for tasks in sizes:
            start = time.monotonic()
            row = settle_epochs(anvil, tasks, args.nodes)
            row["baseline_gas_per_task"] = round(transfer_baseline(anvil, tasks, args.nodes), 1)
            row["vs_baseline"] = round(row["epoch1"]["gas_per_task"] / row["baseline_gas_per_task"], 4)
            results.append(row)
            print(
                f"{tasks:>5} tasks/epoch, {row['jobs']} jobs, {args.nodes} nodes: "
                f"{row['epoch1']['gas_per_task']:>9.1f} gas/task first epoch, "
                f"{row['epoch2']['gas_per_task']:>9.1f} steady "
                f"(postRoot {row['epoch1']['post_root_gas']}, claim ≈{row['epoch1']['claim_gas_mean']}); "
                f"one transfer per task {row['baseline_gas_per_task']:.0f} gas/task "
                f"({time.monotonic() - start:.1f} s)"
            )
    at_1000 = next((r for r in results if r["tasks"] == 1000), None)
    met = None
    if at_1000 is not None:
        met = max(at_1000["epoch1"]["gas_per_task"], at_1000["epoch2"]["gas_per_task"]) <= GOAL
    verdict = "not measured" if met is None else "met" if met else "NOT met"
    print(f"goal ≤ {GOAL} gas/task at 1,000 tasks/epoch: {verdict}")
    emit({"benchmark": "settlement", "goal_gas_per_task_at_1000": GOAL, "goal_met": met, "results": results})


if __name__ == "__main__":
    main()
