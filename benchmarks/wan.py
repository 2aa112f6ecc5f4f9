"""Inference over a wide-area link: benchmarks.inference's job on a one-node grid whose node
reaches the coordinator through a WAN-like proxy (tensorgrid.testing.netsim: 50 ms each way,
a bandwidth cap, a connection reset now and then), next to the same job with the node on
loopback, same run. Goal: ≤ 1.2× the loopback time.

The proxy runs in this process on 127.0.0.1 (no network namespaces, so no root needed): the
node dials it, it dials the coordinator. Only the node's link is slowed: the submitter (this
process) uploads and downloads on loopback in both runs, so the ratio is what the node's
distance costs. tests/integration/test_multihost.py runs the same proxy between hosts.

    python -m benchmarks.wan [--seconds 20] [--shards 16] [--delay-ms 50] [--rate-mbit 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._common import emit
from benchmarks.inference import BATCH, build_model, calibrate_rows
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.spec import VerificationSpec
from tensorgrid.testing.netsim import Link, ProxyThread
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors


@dataclass(frozen=True)
class Run:
    seconds: float
    cpu_s: float  # this process's CPU over the job (the submitter's client and, on the WAN, the proxy)
    tasks: int
    resets: int
    output: Path


def grid_run(root: Path, model: Path, inputs: Path, shard_rows: int, threads: int, link: Link | None) -> Run:
    """The job on a fresh one-node grid, timed from submit to the result downloaded; with
    `link`, the node's only way to the coordinator is a proxy with those settings."""
    out = root / "out.safetensors"
    with LocalGrid(root) as grid, ProxyThread() as proxies:
        grid.start_coordinator()
        target = grid.target
        if link is not None:
            proxy = proxies.add("127.0.0.1", 0, "127.0.0.1", grid.port, link)
            target = f"127.0.0.1:{proxy.port}"
        grid.start_node("node", "--device", "cpu", "--threads", str(threads), coordinator=target)
        grid.wait_for_nodes(1)
        time.sleep(2)  # let the node warm its worker, as a running daemon would have
        with Client(grid.target, Signer.generate()) as client:
            start, cpu = time.monotonic(), time.process_time()
            job = client.submit_inference(
                model,
                inputs,
                shard_rows=shard_rows,
                batch_size=BATCH,
                device="cpu",
                verification=VerificationSpec(mode="none"),  # one node cannot check itself
            )
            final = client.wait(job.job_id)
            assert final.state.value == "succeeded", final.error
            client.result(job.job_id, out)
            seconds, cpu = time.monotonic() - start, time.process_time() - cpu
        return Run(seconds, cpu, final.tasks_total, proxies.resets, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="target in-process compute time")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the node")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--delay-ms", type=float, default=50.0, help="added one way, each direction")
    p.add_argument("--rate-mbit", type=float, default=100.0, help="the link's cap each way, Mbit/s")
    p.add_argument("--reset-mean-s", type=float, default=30.0, help="a connection is reset after this on average")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", type=Path, help="work in this directory and keep it (the grids' logs)")
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    link = Link(
        delay_s=ns.delay_ms / 1000,
        rate_bytes_s=ns.rate_mbit * 1e6 / 8,
        reset_mean_s=ns.reset_mean_s,
        seed=ns.seed,
    )
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        root = ns.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        model, inputs = root / "model.pt2", root / "inputs.safetensors"
        export_program(build_model(1024, 8), (torch.rand(4, 64),), model)
        rows = calibrate_rows(model, root, ns.seconds, ns.threads)
        save_tensors({"x": torch.rand(rows, 64, generator=torch.Generator().manual_seed(1))}, inputs)
        shard_rows = max(BATCH, -(-rows // ns.shards) // BATCH * BATCH)
        loop = grid_run(root / "loopback", model, inputs, shard_rows, ns.threads, None)
        wan = grid_run(root / "wan", model, inputs, shard_rows, ns.threads, link)
        same = torch.equal(load_tensors(loop.output)["output"], load_tensors(wan.output)["output"])
    print(
        f"{rows} rows in {wan.tasks} shards: loopback {loop.seconds:.1f}s, through the WAN proxy "
        f"{wan.seconds:.1f}s ({wan.resets} connections reset)"
    )
    emit(
        {
            "benchmark": "wan",
            "rows": rows,
            "shards": wan.tasks,
            "delay_ms_each_way": ns.delay_ms,
            "rate_mbit": ns.rate_mbit,
            "reset_mean_s": ns.reset_mean_s,
            "resets": wan.resets,
            "loopback_s": round(loop.seconds, 2),
            "wan_s": round(wan.seconds, 2),
            "bench_cpu_s": [round(loop.cpu_s, 2), round(wan.cpu_s, 2)],
            "ratio": round(wan.seconds / loop.seconds, 3),
            "goal_ratio": 1.2,
            "results_equal": same,
        }
    )


if __name__ == "__main__":
    main()
