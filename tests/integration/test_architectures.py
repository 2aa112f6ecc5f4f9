"""Mainstream architectures on a real grid: each exported as its authors would, vetted at intake,
run by two nodes under the default verification policy, and equal to the eager model within
the documented per-dtype tolerance (coordinator/services/verification/compare.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coordinator.services.verification.compare import tolerance
from tensorgrid.client import Client
from tensorgrid.crypto import Signer
from tensorgrid.localgrid import LocalGrid
from tensorgrid.testing.architectures import ARCHITECTURES
from tensorgrid.types import JobState
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.conftest import shared_dir
from tests.integration.conftest import PAIR

pytestmark = pytest.mark.integration
SHARED = PAIR  # each test checks only its own job: they share pair_grid
ROWS, SHARD_ROWS = 24, 8  # three shards, so both nodes work and results get spot-checked


def build_assets(root: Path, name: str) -> None:
    """The exported program, ROWS rows of inputs, and the eager model's outputs over them."""
    arch = ARCHITECTURES[name]
    arch.export(root / "model.pt2")
    inputs = arch.inputs(ROWS, torch.Generator().manual_seed(7))
    save_tensors(inputs, root / "inputs.safetensors")
    torch.manual_seed(0)
    with torch.no_grad():
        expected = arch.build().eval()(*inputs.values())
    save_tensors({"output": expected}, root / "expected.safetensors")


def assets(factory: pytest.TempPathFactory, name: str) -> Path:
    return shared_dir(factory, f"arch-{name}", lambda root: build_assets(root, name))


@pytest.fixture
def grid(pair_grid: LocalGrid) -> LocalGrid:
    return pair_grid


@SHARED
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_runs_on_the_grid_like_locally(
    grid: LocalGrid, name: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    root = assets(tmp_path_factory, name)
    input_names = list(ARCHITECTURES[name].inputs(1, torch.Generator()).keys())
    with Client(grid.target, Signer.generate()) as client:
        job = client.submit_inference(
            root / "model.pt2",
            root / "inputs.safetensors",
            shard_rows=SHARD_ROWS,
            input_names=input_names,
            device="cpu",
        )
        final = client.wait(job.job_id)
        assert final.state == JobState.SUCCEEDED, final.error
        client.result(job.job_id, tmp_path / "out.safetensors")
        report = client.job(job.job_id).verification
    assert report is not None and report.count("caught") == 0, report  # honest nodes are never blamed
    got = load_tensors(tmp_path / "out.safetensors")["output"]
    want = load_tensors(root / "expected.safetensors")["output"]
    assert got.dtype == want.dtype and got.shape == want.shape
    atol, rtol = tolerance(want.dtype)
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
