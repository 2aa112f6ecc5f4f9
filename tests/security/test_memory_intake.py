"""A submitter cannot get past intake a program that already holds more than its task memory limit
on the probe's rows (coordinator.kinds.memory, "Memory at intake"; a decoder on its first prompts,
coordinator.kinds.generation.vetting): over the real gRPC
API, SubmitJob refuses it naming the limit and the measured peak and stores no job; a small
program under the same limit is accepted.

On main the probe ran in the referee's warm child (its cap 4 GiB), which measures no program's
memory: the job was accepted, and every CPU node that leased its task ran it to the limit, each run
a claim and the job failing only after two runs and a review (tests/security/test_memory_limits.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tensorgrid.client import Client, CoordinatorError
from tensorgrid.localgrid import LocalGrid
from tensorgrid.spec import VerificationSpec
from tensorgrid.types import JobState
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import save_tensors
from tests.decoders import export_decoder, tiny_decoder
from tests.security.test_memory_generation import Hungry, V
from tests.unit.coordinator.test_vetting_memory import LIMIT, WIDTH, Hoarder, Small

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)  # a coordinator, its referee and two fresh measuring children start
def test_a_program_over_its_memory_limit_is_refused_at_submission_naming_limit_and_peak(
    make_grid: Callable[..., LocalGrid], tmp_path: Path
) -> None:
    grid = make_grid()
    grid.start_coordinator()
    inputs = tmp_path / "x.safetensors"
    save_tensors({"x": torch.randn(400, WIDTH)}, inputs)
    settings = {"shard_rows": 100, "task_memory_limit_bytes": LIMIT, "verification": VerificationSpec()}
    with Client(grid.target) as client:
        hoarder = tmp_path / "hoarder.pt2"
        export_program(Hoarder().eval(), (torch.zeros(4, WIDTH),), hoarder)
        with pytest.raises(CoordinatorError) as refused:
            client.submit_inference(hoarder, inputs, **settings)
        said = str(refused.value)
        assert "refused: the program needs more than its task_memory_limit_bytes of 512 MiB" in said, said
        assert int(said.split("held at least ")[1].split(" MiB")[0]) >= 1.25 * 512, (
            said
        )  # the peak, named (stopped just past it)
        assert client.jobs() == []  # nothing stored
        small = tmp_path / "small.pt2"
        export_program(Small().eval(), (torch.zeros(4, WIDTH),), small)
        job = client.submit_inference(small, inputs, **settings)
        assert job.state in (JobState.QUEUED, JobState.RUNNING), job


@pytest.mark.timeout(300)
def test_a_decoder_over_its_memory_limit_is_refused_at_submission_naming_limit_and_peak(
    make_grid: Callable[..., LocalGrid], tmp_path: Path
) -> None:
    """The same for a generation job (coordinator.kinds.generation.vetting): its first prompts are
    decoded for a few tokens in a fresh measured child. On main a generation job had no intake run:
    the decoder holding 2 GiB a forward pass was accepted under a 512 MiB limit."""
    grid = make_grid()
    grid.start_coordinator()
    prompts = tmp_path / "p.safetensors"
    g = torch.Generator().manual_seed(0)
    save_tensors({"tokens": torch.randint(1, V, (40, 8), generator=g), "lengths": torch.full((40,), 8)}, prompts)
    settings = {"vocab_size": V, "shard_prompts": 16, "task_memory_limit_bytes": LIMIT}
    with Client(grid.target) as client:
        hungry = tmp_path / "hungry.pt2"
        export_decoder(Hungry(), hungry)
        with pytest.raises(CoordinatorError) as refused:
            client.submit_generation(hungry, prompts, **settings)
        said = str(refused.value)
        assert "refused: the program needs more than its task_memory_limit_bytes of 512 MiB" in said, said
        assert "intake's decoding of its first 16 prompts" in said, said
        assert int(said.split("held at least ")[1].split(" MiB")[0]) >= 1.25 * 512, said
        assert client.jobs() == []  # nothing stored
        small = tmp_path / "small.pt2"
        export_decoder(tiny_decoder(), small)
        job = client.submit_generation(small, prompts, **settings)
        assert job.state in (JobState.QUEUED, JobState.RUNNING), job
