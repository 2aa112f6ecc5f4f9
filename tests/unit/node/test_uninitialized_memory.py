"""A program that returns memory it allocated and never wrote (`empty`, `new_empty`: allowed
operators) must not read an earlier task's tensors in the warm worker: the sandbox has torch
fill such memory (NaN), so what a program leaves behind never reaches the next submitter."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from node.executor import Executor, TaskRequest
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors

MARK = 7.25  # what the first program's tensors hold


class _Writes(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0 + MARK


class _Peeks(torch.nn.Module):
    """Returns memory of its input's shape that nothing wrote."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_empty(x.shape)


def _request(model: Path, inputs: Path, out: Path) -> TaskRequest:
    return TaskRequest(
        kind="inference",
        model_path=str(model),
        input_path=str(inputs),
        output_path=str(out),
        settings={"batch_size": 0},
        device="cpu",
        threads=1,
        time_limit_s=60.0,
    )


def test_a_program_never_reads_what_an_earlier_task_left_in_the_warm_worker(
    loop: asyncio.AbstractEventLoop, executor: Executor, tmp_path: Path
) -> None:
    x = torch.randn(4, 64)
    export_program(_Writes().eval(), (x,), tmp_path / "writes.pt2")
    export_program(_Peeks().eval(), (x,), tmp_path / "peeks.pt2")
    save_tensors({"x": torch.randn(4096, 64)}, tmp_path / "in.safetensors")
    outputs = []
    for i, name in enumerate(("writes", "peeks", "writes", "peeks")):
        out = tmp_path / f"out{i}"
        outcome = loop.run_until_complete(
            executor.run(_request(tmp_path / f"{name}.pt2", tmp_path / "in.safetensors", out))
        )
        assert outcome.ok, outcome
        outputs.append(load_file(out)["output"])
    assert all(bool((o == MARK).all()) for o in outputs[0::2])  # the first program ran
    for peeked in outputs[1::2]:
        assert peeked.shape == (4096, 64)
        assert bool(peeked.isnan().all()), f"{int((peeked == MARK).sum())} values of an earlier task"


def test_a_sandboxed_child_that_runs_programs_is_deterministic_with_cublas_workspace_fixed() -> None:
    """Deterministic mode on CUDA needs CUBLAS_WORKSPACE_CONFIG before CUDA starts (with a task):
    the boot sets it wherever it turns deterministic mode on (no GPU here: the setting is checked)."""
    probe = (
        "import json, os, torch\n"
        "from tensorgrid.sandbox import boot\n"
        "status = {}\n"
        "boot._fill_uninitialized_memory(status)\n"
        "print(json.dumps([os.environ.get('CUBLAS_WORKSPACE_CONFIG'), torch.are_deterministic_algorithms_enabled(),"
        " torch.is_deterministic_algorithms_warn_only_enabled(), status]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    argv = [sys.executable, "-c", probe]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == [":4096:8", True, True, {"uninitialized_memory": "filled"}]
