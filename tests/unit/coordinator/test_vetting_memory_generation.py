"""Intake refuses a generation job whose program already holds more than its task memory limit on
the job's first prompts (coordinator.kinds.generation.vetting, coordinator.kinds.memory): when the
limit is below the referee's cap and the job may run on CPU, its first batch is decoded for a few
tokens in a fresh child of its own, measured as a memory review measures a task. On main a
generation job had no intake run at all: a decoder holding 2 GiB a forward pass under a 512 MiB
limit was accepted, and every CPU node that leased one of its tasks ran it to the limit."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from coordinator.errors import QuotaExceeded
from coordinator.events import EventHub
from coordinator.kinds.generation import GenerationKind
from coordinator.kinds.generation.vetting import PROBE_TOKENS, probes_memory, vet_generation
from coordinator.services.runtime import Runtime
from tensorgrid.blobs.store import BlobStore
from tensorgrid.errors import SpecError
from tensorgrid.spec import GenerationSpec
from tensorgrid.workloads.tensorfile import save_tensors
from tests.decoders import export_decoder, tiny_decoder
from tests.security.test_memory_generation import Hungry, V
from tests.unit.coordinator.conftest import SharedReferee
from tests.unit.coordinator.test_intake_validation import intake
from tests.unit.coordinator.test_vetting_memory import LIMIT, MiB

PROMPTS = 40


def gen_spec(tmp: Path, blobs: BlobStore, module: torch.nn.Module, **kw: object) -> GenerationSpec:
    """A generation job of PROMPTS prompts of 8 tokens (the first four padded from 3) for `module`."""
    model, prompts = tmp / f"{type(module).__name__}.pt2", tmp / "p.safetensors"
    export_decoder(module, model)
    g = torch.Generator().manual_seed(0)
    lengths = torch.full((PROMPTS,), 8)
    lengths[:4] = 3
    save_tensors({"tokens": torch.randint(1, V, (PROMPTS, 8), generator=g), "lengths": lengths}, prompts)
    settings: dict[str, object] = {"vocab_size": V, "shard_prompts": 16, "max_new_tokens": 32, **kw}
    return GenerationSpec(model=blobs.put_file(model), prompts=blobs.put_file(prompts), nonce="n", **settings)  # type: ignore[arg-type]


@pytest.mark.timeout(300)  # fresh children start (a zygote's fork, else torch's import) on a loaded machine
def test_a_decoder_over_its_memory_limit_is_refused_at_intake_and_a_small_one_accepted(
    tmp_path: Path, rt: Runtime, blobs: BlobStore, shared_referee: SharedReferee
) -> None:
    calls = shared_referee.sandbox.calls
    hungry = gen_spec(tmp_path, blobs, Hungry(), task_memory_limit_bytes=LIMIT)
    with pytest.raises(SpecError) as refused:
        vet_generation(hungry, rt, blobs)
    said = str(refused.value)
    assert said.startswith("refused: the program needs more than its task_memory_limit_bytes of 512 MiB"), said
    assert f"intake's decoding of its first 16 prompts ({PROBE_TOKENS} tokens each" in said, said
    assert int(said.split("held at least ")[1].split(" MiB")[0]) >= 1.25 * 512, said  # the peak, named
    vet_generation(gen_spec(tmp_path, blobs, tiny_decoder(), task_memory_limit_bytes=LIMIT), rt, blobs)
    vet_generation(gen_spec(tmp_path, blobs, tiny_decoder(), task_memory_limit_bytes=LIMIT, batch_size=3), rt, blobs)
    assert shared_referee.sandbox.calls == calls  # each ran in a fresh child, not in the warm referee


@pytest.mark.timeout(300)
def test_a_decoder_that_cannot_run_is_refused_saying_so(tmp_path: Path, rt: Runtime, blobs: BlobStore) -> None:
    """Its logits are 50 wide, the job says its vocabulary is 60: the decoding loop fails at once."""
    wrong = gen_spec(tmp_path, blobs, tiny_decoder(), task_memory_limit_bytes=LIMIT, vocab_size=V + 10)
    with pytest.raises(SpecError) as refused:
        vet_generation(wrong, rt, blobs)
    said = str(refused.value)
    assert said.startswith("refused: the program failed to run on intake's decoding of its first 16 prompts"), said


def test_only_a_cpu_limit_below_the_referees_cap_is_probed(tmp_path: Path, rt: Runtime, blobs: BlobStore) -> None:
    """At or over the cap (the default: both 4 GiB) nothing runs at intake, as before; nor for CUDA."""
    cap = rt.sandbox.memory_bytes
    assert cap == 4 << 30
    assert not probes_memory(gen_spec(tmp_path, blobs, tiny_decoder()), rt)
    assert probes_memory(gen_spec(tmp_path, blobs, tiny_decoder(), task_memory_limit_bytes=cap - MiB), rt)
    cuda = gen_spec(tmp_path, blobs, tiny_decoder(), task_memory_limit_bytes=LIMIT, device="cuda")
    assert not probes_memory(cuda, rt)
    vet_generation(gen_spec(tmp_path, blobs, Hungry()), rt, blobs)  # not probed: accepted, no child started


class _Verification:
    """What GenerationKind takes of the verification at start: its runtime, and registrations."""

    def __init__(self, rt: Runtime, blobs: BlobStore) -> None:
        self.rt, self.blobs = rt, blobs

    def add_replay(self, *args: object, **kw: object) -> None:
        pass

    def add_measure(self, *args: object) -> None:
        pass


def test_a_submission_whose_decoding_is_measured_holds_a_validation_slot(
    tmp_path: Path, rt: Runtime, blobs: BlobStore
) -> None:
    """A submitter cannot make intake start many measured children: SubmitJob's vet of a probed
    generation job holds the submitter's validation slot (Kind.vet_is_measured), as inference's does."""
    kind = GenerationKind(_Verification(rt, blobs), EventHub())  # type: ignore[arg-type]
    gate = intake(2)
    gate.kinds = SimpleNamespace(for_job=lambda name: kind)  # type: ignore[assignment]
    probed = gen_spec(tmp_path, blobs, tiny_decoder(), task_memory_limit_bytes=LIMIT)
    with gate._vet_slot("0xa", probed):
        with pytest.raises(QuotaExceeded, match="one per submitter"), gate._vet_slot("0xa", probed):
            pass
        with gate._vet_slot("0xa", gen_spec(tmp_path, blobs, tiny_decoder())):  # not probed: no slot, as before
            pass
