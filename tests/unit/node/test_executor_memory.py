"""A task out of memory in a warm worker runs again in a fresh one before the node reports it:
the worker's peak counts every program it holds from earlier tasks, and the referee judges a
node's out-of-memory report (a claim: coordinator.repositories.limit_claims, "Over its memory limit")
by a fresh child's peak. Real workers, real exported programs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from node.executor import Executor, TaskRequest
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors

MiB = 2**20
HEAVY_MIB = 240  # the weights the warm worker keeps loaded (its program cache)
GROWS_MIB = 260  # what the second program holds while it runs
LIMIT = 640 * MiB  # a fresh worker (~310 MiB with torch) + GROWS fits; the warm one + GROWS does not


class _Heavy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(HEAVY_MIB * MiB // 4), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w.sum()  # every page of its weights touched: resident


class _Grows(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (64, 1024) floats, 256 KiB
        return torch.cat([x] * (GROWS_MIB * 4), dim=1).sum(dim=1, keepdim=True)


def _request(tmp_path: Path, name: str, memory: int) -> TaskRequest:
    return TaskRequest(
        kind="inference",
        model_path=str(tmp_path / f"{name}.pt2"),
        input_path=str(tmp_path / f"{name}_in.safetensors"),
        output_path=str(tmp_path / f"{name}_out.safetensors"),
        settings={"batch_size": 0},
        device="cpu",
        threads=1,
        memory_limit_bytes=memory,
        time_limit_s=120.0,
    )


@pytest.mark.timeout(300)
def test_a_task_out_of_memory_only_beside_other_programs_runs_again_fresh(tmp_path: Path) -> None:
    """Before: the warm worker's peak (its earlier program's 240 MiB + this task's 260 MiB) passed
    the 640 MiB limit and the node reported out of memory, which a fresh worker's run (and the
    referee's measure) stays well within."""
    export_program(_Heavy().eval(), (torch.zeros(2, 4),), tmp_path / "heavy.pt2", dynamic_batch=False)
    export_program(_Grows().eval(), (torch.zeros(64, 1024),), tmp_path / "grows.pt2", dynamic_batch=False)
    save_tensors({"x": torch.zeros(2, 4)}, tmp_path / "heavy_in.safetensors")
    save_tensors({"x": torch.randn(64, 1024)}, tmp_path / "grows_in.safetensors")
    loop = asyncio.new_event_loop()
    executor = Executor()
    try:
        loop.run_until_complete(executor.start())
        assert loop.run_until_complete(executor.run(_request(tmp_path, "heavy", 0))).ok  # now held warm
        warm = executor.pid
        outcome = loop.run_until_complete(executor.run(_request(tmp_path, "grows", LIMIT)))
        assert outcome.ok, outcome
        assert executor.pid != warm  # the run that counted was a fresh worker's
    finally:
        loop.run_until_complete(executor.close())
        loop.close()
