"""A node that holds every row of a round, and is not drawn for audit, sets the next round's
weights through its pseudo-gradient: twice, and they are subnormal. Arithmetic on subnormals is
10-200x slower on x86, so each replay and evaluation the referee then runs from those weights
could go over `--referee-time-s` ("could not check": paid, nobody blamed). The referee, like
every sandboxed child that runs programs, flushes subnormals to zero (tensorgrid/sandbox/boot.py):
it computes those weights as zeros, as fast as zeros. Checked on values, not on time: the
program amplifies its products so that kept subnormals would show in its loss."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from coordinator.services import sandboxed
from coordinator.services.blobs import BlobStore
from coordinator.services.runtime import REFEREE_LIMITS, Runtime
from tensorgrid.spec import NesterovSGD
from tensorgrid.training.compression import PseudoGradient
from tensorgrid.training.outer import average, evaluate, outer_step
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors

TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32, 1.18e-38
AMPLIFY = 1e38  # brings a subnormal product (~1e-39) up to ~0.1: a kept one changes the loss


class _Amplified(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * AMPLIFY


def _lone_node_round(weights: dict[str, torch.Tensor], upload: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain round (the mean of the workers' weights) whose only result is `upload`."""
    result = PseudoGradient(tensors=upload, rows=100, steps=1, losses=[1.0], checkpoint_steps=[0], commitments=[""])
    new, _ = outer_step(weights, average([result]), None, NesterovSGD(1.0, 0.0), weights.keys())
    return new


def test_weights_a_lone_node_made_subnormal_are_computed_as_zeros_by_the_referee(tmp_path: Path) -> None:
    export_program(_Amplified().eval(), (torch.rand(4, 64),), tmp_path / "eval.pt2")
    rows = torch.rand(512, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.rand(512, generator=torch.Generator().manual_seed(2))
    save_tensors({"features": rows, "labels": labels}, tmp_path / "heldout.safetensors")

    weights = {k: v.detach().clone() for k, v in _Amplified().state_dict().items()}
    zeros = _lone_node_round(weights, weights)  # global − itself
    target = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(3)) * 1e-39 for k, v in weights.items()}
    subnormal = _lone_node_round(zeros, {k: -t for k, t in target.items()})
    for name, value in subnormal.items():  # the coordinator's outer step kept every one
        assert bool((value != 0).all() and (value.abs() < TINY).all()), name
    save_tensors(subnormal, tmp_path / "subnormal.safetensors")
    save_tensors(zeros, tmp_path / "zeros.safetensors")

    kept = evaluate(tmp_path / "eval.pt2", subnormal, tmp_path / "heldout.safetensors", "mse")
    as_zeros = evaluate(tmp_path / "eval.pt2", zeros, tmp_path / "heldout.safetensors", "mse")
    assert kept["loss"] != as_zeros["loss"]  # this process keeps subnormals: the loss shows them

    rt = Runtime(inline_db=True, db_threads=1, sandbox=REFEREE_LIMITS)
    blobs = BlobStore(tmp_path / "store")
    try:
        files = (tmp_path / "eval.pt2", tmp_path / "subnormal.safetensors", tmp_path / "heldout.safetensors")
        referee = sandboxed.evaluate_weights(rt, blobs, *files, "mse")
    finally:
        asyncio.run(rt.stop())  # the referee's child
        rt.shutdown()
    assert referee["loss"] == as_zeros["loss"] == float((labels**2).mean())
