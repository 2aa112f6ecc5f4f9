"""Intake refuses a training job whose program already holds more than its task memory limit on
its first inner step (coordinator.kinds.training.vetting, coordinator.kinds.memory): when the limit
is below the referee's cap and the job may run on CPU, plan runs round 0's first task's first step
in a fresh child of its own, measured as a memory review measures a task. On main the intake only
loaded the programs in the warm referee (cap 4 GiB): a train program holding 1 GiB a forward pass
under a 512 MiB limit was accepted, and every CPU node that leased one of its tasks ran it to the
limit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from coordinator.config import Limits
from coordinator.kinds.training.plan import plan_training
from coordinator.kinds.training.vetting import probes_memory
from coordinator.services.runtime import Runtime
from tensorgrid.blobs.store import BlobStore
from tensorgrid.errors import SpecError
from tensorgrid.spec import TrainingSpec, canonical_json, spec_hash
from tensorgrid.workloads.model import export_program
from tests.datasets import save_digits
from tests.unit.coordinator.test_vetting_memory import LIMIT, MiB


class Hoarding(torch.nn.Module):
    """A digits classifier that also holds 1 GiB a forward pass, whatever its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = x[:1].expand(2**22, 64).contiguous()  # 2**22 × 64 × 4 B
        return self.inner(x) + big.sum() * 0


def plan(tmp: Path, blobs: BlobStore, rt: Runtime, module: torch.nn.Module, **kw: object) -> TrainingSpec:
    """Plan a two-round training job of `module` on the digits (SpecError if intake refuses it)."""
    torch.manual_seed(0)
    program, dataset = tmp / f"{type(module).__name__}.pt2", tmp / "digits.safetensors"
    export_program(module.train(), (torch.randn(4, 64),), program)
    save_digits(dataset)
    settings: dict[str, object] = dict(rounds=2, workers_per_round=2, inner_steps=4, batch_size=8, nonce="n", **kw)
    spec = TrainingSpec(train_program=blobs.put_file(program), dataset=blobs.put_file(dataset), **settings)  # type: ignore[arg-type]
    raw = canonical_json(spec)
    plan_training(spec, raw, "0x" + "ab" * 20, spec_hash(raw), "cd" * 32, rt, blobs, Limits())
    return spec


@pytest.mark.timeout(300)  # fresh children start (a zygote's fork, else torch's import) on a loaded machine
def test_a_train_program_over_its_memory_limit_is_refused_at_intake_and_a_small_one_accepted(
    tmp_path: Path, rt: Runtime, blobs: BlobStore
) -> None:
    with pytest.raises(SpecError) as refused:
        plan(tmp_path, blobs, rt, Hoarding(), task_memory_limit_bytes=LIMIT)
    said = str(refused.value)
    assert said.startswith("refused: the program needs more than its task_memory_limit_bytes of 512 MiB"), said
    assert "intake's run of the first inner step of its first task" in said, said
    assert int(said.split("held at least ")[1].split(" MiB")[0]) >= 1.25 * 512, said  # the peak, named
    small = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    plan(tmp_path, blobs, rt, small, task_memory_limit_bytes=LIMIT)


def test_only_a_cpu_limit_below_the_referees_cap_is_measured(tmp_path: Path, rt: Runtime, blobs: BlobStore) -> None:
    """At or over the cap (the default: both 4 GiB) only the trial load runs, as before; nor for CUDA."""
    cap = rt.sandbox.memory_bytes
    assert cap == 4 << 30
    spec = plan(tmp_path, blobs, rt, Hoarding())  # not measured: accepted, as on main
    assert not probes_memory(spec, rt)
    assert probes_memory(replace(spec, task_memory_limit_bytes=cap - MiB), rt)
    assert not probes_memory(replace(spec, task_memory_limit_bytes=LIMIT, device="cuda"), rt)
