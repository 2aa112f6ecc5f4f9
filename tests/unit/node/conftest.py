"""Shared fixtures: one event loop per module (so a warm executor can be reused) and small
exported programs, including hostile ones."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from node.executor import Executor
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(scope="module")
def executor(loop: asyncio.AbstractEventLoop) -> Iterator[Executor]:
    """A started executor (its worker warm), shared by a module's tests."""
    ex = Executor()
    loop.run_until_complete(ex.start())
    yield ex
    loop.run_until_complete(ex.close())


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class _Slow(torch.nn.Module):
    """About 700 GFLOP (seconds of one core): far longer than any time limit the tests set, in
    a handful of graph nodes (200 small layers cost 2.6 CPU-s to export and 0.5 per load)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = x.repeat(4, 4)  # 4096×4096
        for _ in range(5):
            big = torch.tanh(big @ big / 64)
        return big[:1024, :1024]


class _Hog(torch.nn.Module):
    """Allocates a fixed 4 GiB tensor whatever the input: a memory bomb in a valid program."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones(32768, 32768).sum()


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    paths = {name: root / f"{name}.pt2" for name in ("tiny", "slow", "hog")}
    export_program(_Tiny().eval(), (torch.randn(8, 4),), paths["tiny"])
    export_program(_Slow().eval(), (torch.randn(1024, 1024),), paths["slow"], dynamic_batch=False)
    export_program(_Hog().eval(), (torch.randn(2, 4),), paths["hog"], dynamic_batch=False)
    save_tensors({"x": torch.randn(10, 4)}, root / "tiny_in.safetensors")
    save_tensors({"x": torch.randn(1024, 1024)}, root / "slow_in.safetensors")
    save_tensors({"x": torch.randn(2, 4)}, root / "hog_in.safetensors")
    garbage = root / "garbage.pt2"
    garbage.write_bytes(b"\x80\x04definitely not a program" * 100)
    paths["garbage"] = garbage
    for name in ("tiny", "slow", "hog"):
        paths[f"{name}_in"] = root / f"{name}_in.safetensors"
    return paths
