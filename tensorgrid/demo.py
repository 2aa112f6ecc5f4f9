"""The demo: train a digits classifier, export it, and run grid inference on a local grid.

It starts a coordinator and N nodes as real processes on 127.0.0.1, submits a job through
the SDK, checks that the grid's result equals local inference, prints throughput, and
stops everything it started.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from tensorgrid import exitcodes
from tensorgrid.chain.client import ChainClient
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.demo_settlement import REWARD_WEI, show_settlement
from tensorgrid.devnet import start_chain_grid
from tensorgrid.localca import make_local_ca
from tensorgrid.localgrid import LocalGrid
from tensorgrid.progress import byte_progress, watch_job
from tensorgrid.report import verification_line
from tensorgrid.types import JobInfo
from tensorgrid.workloads.inference import run_inference
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors

FAST = ("--heartbeat-ms", "1000", "--lease-ttl-ms", "5000")


def digits_model(seed: int = 0, epochs: int = 60) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, float]:
    """An MLP trained on scikit-learn's bundled digits; returns (model, x_test, y_test, test accuracy)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.3, random_state=seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    xt = torch.tensor(x_train, dtype=torch.float32)
    yt = torch.tensor(y_train)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    xs = torch.tensor(x_test, dtype=torch.float32)
    ys = torch.tensor(y_test)
    with torch.no_grad():
        acc = (model(xs).argmax(1) == ys).float().mean().item()
    return model, xs, ys, acc


def make_inputs(x_test: torch.Tensor, rows: int, seed: int = 0) -> torch.Tensor:
    """The test digits, repeated with a little pixel noise up to `rows` rows."""
    g = torch.Generator().manual_seed(seed)
    reps = -(-rows // len(x_test))
    x = x_test.repeat(reps, 1)[:rows]
    return (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1).contiguous()


def run_demo(ns: argparse.Namespace) -> int:
    root = Path(ns.keep) if ns.keep else Path(tempfile.mkdtemp(prefix="tensorgrid-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _demo(root, ns.nodes, ns.rows, ns.shard_rows, chain=not ns.no_chain)
    finally:
        if not ns.keep:
            shutil.rmtree(root, ignore_errors=True)


def _demo(root: Path, nodes: int, rows: int, shard_rows: int, chain: bool) -> int:
    print("1. training a digits classifier locally (scikit-learn's bundled digits)")
    model, x_test, y_test, acc = digits_model()
    print(f"   test accuracy {acc:.3f} on {len(y_test)} held-out digits")
    model_path, inputs_path = root / "digits.pt2", root / "inputs.safetensors"
    export_program(model, (x_test[:8],), model_path)
    save_tensors({"pixels": make_inputs(x_test, rows)}, inputs_path)
    print(f"   exported {model_path.name} and {rows} input rows")
    if chain:
        print(f"2. starting a devnet: anvil, the contracts, a coordinator (TLS, a local CA) and {nodes} staked nodes")
        cg = start_chain_grid(root / "devnet", nodes, coordinator_args=FAST, tls=True)
        try:
            print(
                f"   chain {cg.anvil.rpc_url}, NodeRegistry {cg.deployment.node_registry}, "
                f"Settlement {cg.deployment.settlement}"
            )
            signer = Signer.from_hex(cg.submitter_key)
            chain_client = ChainClient.connect(cg.anvil.rpc_url, cg.deployment, signer.private_key)
            with cg.grid.client(signer, chain=chain_client) as client:
                outcome = _run_job(client, model_path, inputs_path, shard_rows, root, REWARD_WEI, cg.grid)
                if isinstance(outcome, int):
                    return outcome
                out, grid_s, job = outcome
                code = _compare(root, model_path, inputs_path, out, rows, grid_s, job)
                show_settlement(cg, client, job)
            return code
        finally:
            cg.stop()
    with LocalGrid(root / "grid", tls=make_local_ca(root / "tls")) as grid:
        print(f"2. starting a coordinator and {nodes} nodes on 127.0.0.1 over TLS (a local CA; no chain)")
        grid.start_coordinator(*FAST)
        for i in range(nodes):
            grid.start_node(f"node{i}", "--device", "cpu", "--threads", "1")
        with grid.client(Signer.generate()) as client:
            outcome = _run_job(client, model_path, inputs_path, shard_rows, root, 0, grid)
    if isinstance(outcome, int):
        return outcome
    out, grid_s, job = outcome
    return _compare(root, model_path, inputs_path, out, rows, grid_s, job)


def _run_job(
    client: Client, model_path: Path, inputs_path: Path, shard_rows: int, root: Path, reward: int, grid: LocalGrid
) -> tuple[Path, float, JobInfo] | int:
    print("3. submitting the job" + (f", escrow funded with {reward} wei per task" if reward else ""))
    start = time.monotonic()
    with byte_progress("uploading") as progress:
        job = client.submit_inference(
            model_path,
            inputs_path,
            progress=progress,
            shard_rows=shard_rows,
            batch_size=500,
            device="cpu",
            reward_per_task_wei=reward,
        )
    print(f"   job {job.job_id[:16]}… with {job.tasks_total} tasks")
    final = watch_job(client, job.job_id, health=grid.check_running)  # a dead node or coordinator ends the demo
    grid_s = time.monotonic() - start
    if final.state.value != "succeeded":
        print(f"   job ended {final.state.value}: {final.error}")
        return exitcodes.JOB_FAILED
    report = client.job(job.job_id).verification
    if report is not None:  # the spot-checks the coordinator drew, and what they bought
        print(f"   {verification_line(report)}")
    return client.result(job.job_id, root / "grid_out.safetensors"), grid_s, final


def _compare(root: Path, model_path: Path, inputs_path: Path, out: Path, rows: int, grid_s: float, job: JobInfo) -> int:
    print("4. running the same inference locally and comparing")
    torch.set_num_threads(1)
    local_path = root / "local_out.safetensors"
    start = time.monotonic()
    run_inference(model_path, inputs_path, local_path, batch_size=500, device="cpu")
    local_s = time.monotonic() - start
    grid_out = load_tensors(out)["output"]
    local_out = load_tensors(local_path)["output"]
    same_shape = grid_out.shape == local_out.shape
    max_diff = (grid_out - local_out).abs().max().item() if same_shape else float("inf")
    same_classes = same_shape and bool((grid_out.argmax(1) == local_out.argmax(1)).all())
    print(
        f"   result {tuple(grid_out.shape)}, max |grid − local| = {max_diff:.2e}, "
        f"predicted classes identical: {same_classes}"
    )
    print(f"   grid:  {rows / grid_s:,.0f} rows/s end to end ({grid_s:.1f}s incl. upload, scheduling, download)")
    print(f"   local: {rows / local_s:,.0f} rows/s in-process on one thread ({local_s:.2f}s)")
    ok = same_classes and max_diff <= 1e-5
    print("demo OK: the grid's result equals local inference" if ok else "demo FAILED: results differ")
    return exitcodes.OK if ok else exitcodes.ERROR
