"""Integration fixtures: real coordinator and node processes on 127.0.0.1, real models and data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tensorgrid.localgrid import LocalGrid
from tensorgrid.workloads.inference import run_inference
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors

pytestmark = pytest.mark.integration
FAST = ("--heartbeat-ms", "300", "--lease-ttl-ms", "1500", "--check-wait-ms", "2000")


@dataclass(frozen=True)
class Assets:
    model: Path
    inputs: Path
    expected: Path  # local inference over inputs, batch_size=BATCH, one thread
    rows: int


BATCH = 250


def _mlp(width: int, depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Linear(64, width), torch.nn.ReLU()]
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10)).eval()


def _assets(root: Path, rows: int, width: int, depth: int) -> Assets:
    from sklearn.datasets import load_digits

    root.mkdir(parents=True, exist_ok=True)
    x = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
    x = x.repeat(-(-rows // len(x)), 1)[:rows].contiguous()
    model, inputs, expected = root / "model.pt2", root / "inputs.safetensors", root / "expected.safetensors"
    export_program(_mlp(width, depth), (x[:4],), model)
    save_tensors({"pixels": x}, inputs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run_inference(model, inputs, expected, batch_size=BATCH, device="cpu")
    torch.set_num_threads(threads)
    return Assets(model, inputs, expected, rows)


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """A small MLP over 3,000 rows of real digits: quick tasks."""
    return _assets(tmp_path_factory.mktemp("digits"), 3000, 64, 1)


@pytest.fixture(scope="session")
def slow_digits(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """A deep, wide MLP: each 1,000-row shard takes a noticeable fraction of a second."""
    return _assets(tmp_path_factory.mktemp("slow"), 12_000, 1024, 12)


@pytest.fixture
def make_grid(tmp_path: Path) -> Iterator[Callable[..., LocalGrid]]:
    grids: list[LocalGrid] = []

    def make(*coordinator_args: str) -> LocalGrid:
        grid = LocalGrid(tmp_path / f"grid{len(grids)}", coordinator_args=[*FAST, *coordinator_args])
        grids.append(grid)
        return grid

    yield make
    for grid in grids:
        grid.stop()


def node_args(threads: int = 1) -> tuple[str, ...]:
    return ("--device", "cpu", "--threads", str(threads))
