"""Intake refuses a program whose probe already holds more than its task memory limit
(coordinator.kinds.inference.vetting, "Memory at intake"): the probe runs in a fresh child of its
own, its peak resident memory measured as a memory review measures a task's, when the limit is
below the referee's cap. Before, the probe ran in the warm referee (cap 4 GiB), which cannot tell
one program's memory: the job was accepted and every CPU node that leased a task ran it to the
limit. A program small at the probe's rows and large at a shard's is accepted: the nodes' claims
and their review measure the whole task (tests/security/test_memory_limits.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from coordinator.kinds.inference import vetting
from coordinator.kinds.inference.vetting import measures_memory, vet_inference
from coordinator.services.runtime import Runtime
from tensorgrid.blobs.store import BlobStore
from tensorgrid.errors import SpecError
from tensorgrid.spec import InferenceSpec
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.unit.coordinator.conftest import SharedReferee

MiB = 2**20
LIMIT = 512 * MiB  # a fresh child holds ~300 MiB with torch: a small program stays within 1.25× it
WIDTH = 64


class Hoarder(torch.nn.Module):
    """1 GiB whatever its batch: its first row copied 2**22 times, then summed away."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = x[:1].expand(2**22, WIDTH).contiguous()  # 2**22 × 64 × 4 B
        return (2 * x).sum(dim=1, keepdim=True) + big.sum() * 0


class Small(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (2 * x).sum(dim=1, keepdim=True)


class PerRow(torch.nn.Module):
    """Memory in proportion to its batch: 256 KiB a row (4 MiB on the probe's 16 rows, 1 GiB on a
    shard of 4096 in one batch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] * 1024, dim=1).sum(dim=1, keepdim=True)


def _spec(tmp: Path, blobs: BlobStore, module: torch.nn.Module, rows: int = 400, **kw: object) -> InferenceSpec:
    model, inputs = tmp / f"{type(module).__name__}.pt2", tmp / "x.safetensors"
    export_program(module.eval(), (torch.randn(4, WIDTH),), model)
    save_tensors({"x": torch.randn(rows, WIDTH)}, inputs)
    return InferenceSpec(model=blobs.put_file(model), inputs=blobs.put_file(inputs), nonce="n", **kw)  # type: ignore[arg-type]


@pytest.mark.timeout(300)  # fresh children start (a zygote's fork, else torch's import) on a loaded machine
def test_a_program_over_its_memory_limit_at_the_probe_is_refused_at_intake_and_a_small_one_accepted(
    tmp_path: Path, rt: Runtime, blobs: BlobStore, shared_referee: SharedReferee
) -> None:
    calls = shared_referee.sandbox.calls
    hoarder = _spec(tmp_path, blobs, Hoarder(), shard_rows=100, task_memory_limit_bytes=LIMIT)
    with pytest.raises(SpecError) as refused:
        vet_inference(hoarder, rt, blobs)
    said = str(refused.value)
    assert said.startswith("refused: the program needs more than its task_memory_limit_bytes of 512 MiB"), said
    held = int(said.split("held at least ")[1].split(" MiB")[0])
    assert held >= 1.25 * 512, said  # the measured peak, named (the run is stopped just past it)
    vet_inference(_spec(tmp_path, blobs, Small(), shard_rows=100, task_memory_limit_bytes=LIMIT), rt, blobs)
    # and one whose memory grows with its batch, small on the probe's rows: the claims' review measures
    # the whole task at the job's batch size (tests/security/test_memory_limits.py runs such a job)
    per_row = _spec(tmp_path, blobs, PerRow(), rows=4096, shard_rows=4096, batch_size=0, task_memory_limit_bytes=LIMIT)
    vet_inference(per_row, rt, blobs)
    assert shared_referee.sandbox.calls == calls  # all three probes ran in fresh children, not the warm one


def test_only_a_limit_below_the_referees_cap_on_cpu_is_measured(tmp_path: Path, rt: Runtime, blobs: BlobStore) -> None:
    """At or over the cap (the default: both 4 GiB) the cap guards it: a probe over 1.25× the limit runs
    out of it and is refused naming both, at no extra child; a CUDA job's memory is the GPU's."""
    cap = rt.sandbox.memory_bytes
    assert cap == 4 << 30
    spec = _spec(tmp_path, blobs, Small())
    assert not measures_memory(spec, rt)  # the default limit, 4 GiB
    assert measures_memory(_spec(tmp_path, blobs, Small(), task_memory_limit_bytes=cap - MiB), rt)
    assert not measures_memory(_spec(tmp_path, blobs, Small(), task_memory_limit_bytes=LIMIT, device="cuda"), rt)


def test_without_proc_the_probe_runs_in_the_warm_child_as_before(
    tmp_path: Path, rt: Runtime, blobs: BlobStore, shared_referee: SharedReferee, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vetting, "can_measure", lambda: False)
    calls = shared_referee.sandbox.calls
    vet_inference(_spec(tmp_path, blobs, Hoarder(), shard_rows=100, task_memory_limit_bytes=LIMIT), rt, blobs)
    assert shared_referee.sandbox.calls == calls + 1  # unmeasured: accepted, left to the nodes' claims


@pytest.mark.timeout(300)
def test_a_probe_out_of_the_referees_cap_is_refused_naming_cap_and_limit(
    tmp_path: Path, blobs: BlobStore, shared_referee: SharedReferee
) -> None:
    """A limit at or over the cap (the default: 4 GiB each) is not measured: the cap guards it. A
    program that needs more than the cap is refused saying so (before: "failed on sample rows")."""
    rt = Runtime(inline_db=True, db_threads=1, sandbox=replace(shared_referee.sandbox.limits, memory_bytes=LIMIT))
    try:  # a warm child of its own under a 512 MiB cap; the limit, 512 MiB, is not below it
        with pytest.raises(SpecError) as refused:
            vet_inference(_spec(tmp_path, blobs, Hoarder(), shard_rows=100, task_memory_limit_bytes=LIMIT), rt, blobs)
    finally:
        asyncio.run(rt.stop())
    said = str(refused.value)
    assert said.startswith("refused: the program ran out of the coordinator's memory cap of 512 MiB"), said
    assert "its task_memory_limit_bytes is 512 MiB" in said, said
