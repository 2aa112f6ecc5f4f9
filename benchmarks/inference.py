"""Inference overhead: wall time of a grid inference job on one node vs the same inference
in-process, same run, same thread count, a job of at least 20 s of compute. Goal: ≤ 1.10.

The grid's time runs from submit (upload included) to the result downloaded; the node is
started beforehand, as a volunteer's daemon would be.

    python -m benchmarks.inference [--seconds 20] [--threads 2] [--shards 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import emit
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.workloads.inference import run_inference
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors

BATCH = 256


def build_model(width: int, depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Linear(64, width), torch.nn.GELU()]
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10)).eval()


def calibrate_rows(model_path: Path, root: Path, seconds: float) -> int:
    """Rows that take about `seconds` in-process on this machine right now."""
    probe_rows = 2048
    probe = root / "probe.safetensors"
    save_tensors({"x": torch.rand(probe_rows, 64)}, probe)
    run_inference(model_path, probe, root / "probe_out.safetensors", batch_size=BATCH, device="cpu")
    start = time.monotonic()
    run_inference(model_path, probe, root / "probe_out.safetensors", batch_size=BATCH, device="cpu")
    per_row = (time.monotonic() - start) / probe_rows
    return int(seconds / per_row) // BATCH * BATCH


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="target in-process compute time")
    p.add_argument("--threads", type=int, default=2, help="torch threads, in-process and on the node")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--depth", type=int, default=8)
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        root = Path(tmp)
        model_path, inputs = root / "model.pt2", root / "inputs.safetensors"
        export_program(build_model(ns.width, ns.depth), (torch.rand(4, 64),), model_path)
        rows = calibrate_rows(model_path, root, ns.seconds)
        save_tensors({"x": torch.rand(rows, 64, generator=torch.Generator().manual_seed(1))}, inputs)
        shard_rows = max(BATCH, -(-rows // ns.shards) // BATCH * BATCH)
        with LocalGrid(root / "grid") as grid:
            grid.start_coordinator()
            grid.start_node("node", "--device", "cpu", "--threads", str(ns.threads))
            time.sleep(3)  # let the node register and warm its worker, as a running daemon would be
            with Client(grid.target, Signer.generate()) as client:
                start = time.monotonic()
                job = client.submit_inference(model_path, inputs, shard_rows=shard_rows, batch_size=BATCH, device="cpu")
                final = client.wait(job.job_id)
                assert final.state.value == "succeeded", final.error
                client.result(job.job_id, root / "grid_out.safetensors")
                grid_s = time.monotonic() - start
        start = time.monotonic()
        run_inference(model_path, inputs, root / "local_out.safetensors", batch_size=BATCH, device="cpu")
        local_s = time.monotonic() - start
        same = torch.allclose(
            load_tensors(root / "grid_out.safetensors")["output"],
            load_tensors(root / "local_out.safetensors")["output"],
            rtol=0,
            atol=1e-5,
        )
    print(f"in-process {local_s:.1f}s, grid with one node {grid_s:.1f}s for {rows} rows in {final.tasks_total} shards")
    emit(
        {
            "benchmark": "inference",
            "rows": rows,
            "shards": final.tasks_total,
            "threads": ns.threads,
            "local_s": round(local_s, 2),
            "grid_s": round(grid_s, 2),
            "ratio": round(grid_s / local_s, 3),
            "goal_ratio": 1.10,
            "results_equal": same,
        }
    )


if __name__ == "__main__":
    main()
