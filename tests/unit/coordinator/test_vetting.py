"""The determinism contract at intake, on stored blobs: refused with the reason, or accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coordinator.kinds.inference.vetting import vet_inference
from coordinator.services.runtime import Runtime
from tensorgrid.blobs.store import BlobStore
from tensorgrid.errors import SpecError
from tensorgrid.spec import InferenceSpec
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.unit.coordinator.conftest import SharedReferee


class Head(torch.nn.Module):
    def __init__(self, centre: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.centre = torch.nn.Linear(6, 3), centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        return y - y.mean(0) if self.centre else y


def _spec(tmp: Path, blobs: BlobStore, module: torch.nn.Module, rows: int = 300, **kw: object) -> InferenceSpec:
    model, inputs = tmp / "m.pt2", tmp / "x.safetensors"
    export_program(module.eval(), (torch.randn(4, 6),), model)
    save_tensors({"x": torch.randn(rows, 6)}, inputs)
    return InferenceSpec(model=blobs.put_file(model), inputs=blobs.put_file(inputs), nonce="n", **kw)  # type: ignore[arg-type]


def test_intake_refuses_a_row_dependent_program_and_accepts_an_honest_one(
    tmp_path: Path, rt: Runtime, blobs: BlobStore, shared_referee: SharedReferee
) -> None:
    calls = shared_referee.sandbox.calls
    vet_inference(_spec(tmp_path, blobs, Head(centre=False), shard_rows=100), rt, blobs)
    with pytest.raises(SpecError, match="not verifiable.*batch.*only on its own input row"):
        vet_inference(_spec(tmp_path, blobs, Head(centre=True), shard_rows=100), rt, blobs)
    assert shared_referee.sandbox.calls == calls + 2  # the graphs ran in the sandboxed child


def test_a_program_that_cannot_run_a_row_alone_is_refused_with_what_was_run(
    tmp_path: Path, rt: Runtime, blobs: BlobStore
) -> None:
    model, inputs = tmp_path / "m.pt2", tmp_path / "x.safetensors"
    export_program(Head(centre=False).eval(), (torch.randn(4, 6),), model, dynamic_batch=False)  # 4 rows only
    save_tensors({"x": torch.randn(8, 6)}, inputs)
    spec = InferenceSpec(model=blobs.put_file(model), inputs=blobs.put_file(inputs), nonce="n", batch_size=4)
    with pytest.raises(SpecError, match="failed on sample rows"):
        vet_inference(spec, rt, blobs)


class Slow(torch.nn.Module):
    """Honestly slow: a `width`-wide matmul `loops` times a batch."""

    def __init__(self, loops: int = 200, width: int = 512) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.loops = loops
        self.lin = torch.nn.Linear(6, width)
        self.weight = torch.nn.Parameter(torch.randn(width, width) / width**0.5, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        for _ in range(self.loops):
            y = torch.tanh(y @ self.weight)
        return y


def test_a_job_whose_tasks_cannot_fit_their_time_limit_is_refused_at_intake(
    tmp_path: Path, rt: Runtime, blobs: BlobStore
) -> None:
    """Before: accepted, and every node that took a task ran it to its limit (a claim each, now:
    repositories.limit_claims, "Over its time limit"). The probe's batch (2 rows here) is no larger than
    the job's, so 600 batches of 2 rows take at least 600 of its runs, each at least its CPU time
    over the threads it may use (~18 ms of CPU a run here: 5.5 s with 2 threads), past a 1 s limit."""
    program = Slow(loops=25, width=1024)
    slow = _spec(tmp_path, blobs, program, rows=1200, shard_rows=1200, batch_size=2, task_time_limit_s=1)
    with pytest.raises(SpecError, match=r"at least \d+s on the coordinator's CPU, over its task_time_limit_s of 1s"):
        vet_inference(slow, rt, blobs)
    # the same program in one batch a shard, or for CUDA nodes, is not refused: no lower bound says so
    vet_inference(_spec(tmp_path, blobs, Slow(), shard_rows=300, batch_size=0, task_time_limit_s=1), rt, blobs)
    vet_inference(
        _spec(tmp_path, blobs, Slow(), shard_rows=300, batch_size=2, task_time_limit_s=1, device="cuda"), rt, blobs
    )
