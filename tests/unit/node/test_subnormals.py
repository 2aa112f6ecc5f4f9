"""Subnormal floats are flushed to zero in every sandboxed child that runs programs
(tensorgrid/sandbox/boot.py): arithmetic on them is 10-200x slower on x86, so a program's
weights or rows full of them would slow a task, and the referee's re-run of it, past its
time limit. Checked on values, not on time: a subnormal in, or a subnormal product of normal
numbers, comes out as zero, on each of the worker's threads."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from node.executor import Executor, TaskRequest
from node.serving.process import ReplicaLoad, ServingProcess
from tensorgrid.serving import tensors_from_bytes, tensors_to_bytes
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors

WIDTH = 64
ROWS = 4096  # 256 Ki values per output half: torch splits the elementwise product across threads
TINY_WEIGHT = 1e-39  # float32 subnormal (the smallest normal is 1.18e-38)
THREADS = 2


class Products(torch.nn.Module):
    """[x · 1, x @ W]: the first half is subnormal for subnormal rows, the second for every row,
    W being the identity scaled to a subnormal."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(WIDTH, WIDTH, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(WIDTH) * TINY_WEIGHT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x * 1.0, self.linear(x)], dim=1)


def rows() -> torch.Tensor:
    """Half the rows subnormal (randn × 1e-39), half normal."""
    x = torch.randn(ROWS, WIDTH, generator=torch.Generator().manual_seed(0))
    x[: ROWS // 2] *= 1e-39
    assert bool((x[: ROWS // 2].abs() < torch.finfo(torch.float32).tiny).all())
    return x


def assert_flushed(x: torch.Tensor, out: torch.Tensor) -> None:
    """No subnormal came out: subnormal rows and every product with W are zero, normal rows are x."""
    half = ROWS // 2
    assert out.shape == (ROWS, 2 * WIDTH)
    assert int((out[:half, :WIDTH] != 0).sum()) == 0, "subnormal inputs were kept"
    assert int((out[:, WIDTH:] != 0).sum()) == 0, "subnormal products were kept"
    assert torch.equal(out[half:, :WIDTH], x[half:])


def export_products(path: Path) -> None:
    export_program(Products().eval(), (torch.randn(8, WIDTH),), path)


def test_a_nodes_worker_flushes_subnormals_on_every_thread(
    loop: asyncio.AbstractEventLoop, executor: Executor, tmp_path: Path
) -> None:
    export_products(tmp_path / "products.pt2")
    x = rows()
    save_tensors({"x": x}, tmp_path / "in.safetensors")
    request = TaskRequest(
        kind="inference",
        model_path=str(tmp_path / "products.pt2"),
        input_path=str(tmp_path / "in.safetensors"),
        output_path=str(tmp_path / "out"),
        settings={"batch_size": 0},
        device="cpu",
        threads=THREADS,
        time_limit_s=60.0,
    )
    outcome = loop.run_until_complete(executor.run(request))
    assert outcome.ok, outcome
    assert_flushed(x, load_file(tmp_path / "out")["output"])


def test_a_serving_replica_flushes_subnormals(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    export_products(tmp_path / "products.pt2")
    x = rows()
    load = ReplicaLoad(str(tmp_path / "products.pt2"), "inference", {"input_names": ["x"]}, device="cpu",
                       threads=THREADS, memory_limit_bytes=4 << 30)  # fmt: skip
    proc = ServingProcess(load)
    try:
        assert loop.run_until_complete(proc.ready()) is None
        [answer] = loop.run_until_complete(proc.run_batch([tensors_to_bytes({"x": x})]))
    finally:
        loop.run_until_complete(proc.close())
    assert isinstance(answer, bytes), answer
    assert_flushed(x, tensors_from_bytes(answer)["output"])


def test_the_boot_turns_flushing_on_and_reports_it() -> None:
    probe = (
        "import json, torch\n"
        "from tensorgrid.sandbox import boot\n"
        "status = {}\n"
        "before = (torch.tensor([1e-40]) * 1.0).item()\n"
        "boot._flush_subnormals(status)\n"
        "print(json.dumps([before, (torch.tensor([1e-40]) * 1.0).item(), status]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    before, after, status = json.loads(out.stdout.splitlines()[-1])
    assert before > 0  # a plain process keeps subnormals
    assert after == 0.0 and status == {"subnormals": "flushed"}
