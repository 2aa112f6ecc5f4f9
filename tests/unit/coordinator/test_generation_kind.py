"""The generation kind at intake and on receipt: shards carry their prompts' job indices, bad
prompt files and foreign outputs are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.config import Limits
from coordinator.errors import Rejected
from coordinator.kinds.generation import GenerationKind
from coordinator.repositories.tasks import TaskRecord
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import SpecError
from tensorgrid.spec import GenerationSpec, VerificationSpec, canonical_json, spec_hash
from tensorgrid.types import BlobRef
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.decoders import export_decoder, tiny_decoder

V = 50


class Replays:
    """The part of Verification a kind registers with: its replays (never run here)."""

    rt: Any = None
    blobs: Any = None

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.scores: list[str] = []

    def add_replay(self, kind: str, replay: Any, score: Any = None) -> None:
        self.kinds.append(kind)
        if score is not None:
            self.scores.append(kind)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("decoder") / "decoder.pt2"
    export_decoder(tiny_decoder(), path)
    return path


def put(blobs: BlobStore, tensors: dict[str, torch.Tensor], tmp: Path) -> BlobRef:
    save_tensors(tensors, tmp / "x.safetensors")
    return blobs.put_file(tmp / "x.safetensors")


def plan(tmp_path: Path, decoder: Path, prompts: dict[str, torch.Tensor], **settings: Any) -> tuple[Any, Any, Any]:
    blobs = BlobStore(tmp_path / "blobs")
    replays = Replays()
    kind = GenerationKind(replays, None)  # type: ignore[arg-type]
    assert replays.kinds == replays.scores == ["generation"]  # the referee learns to replay and score them
    spec = GenerationSpec(
        model=blobs.put_file(decoder), prompts=put(blobs, prompts, tmp_path), vocab_size=V, **settings
    )
    raw = canonical_json(spec)
    job, tasks = kind.plan(spec, raw, "0x" + "11" * 20, spec_hash(raw), "ab" * 32, blobs, Limits())
    return job, tasks, blobs


def test_shards_carry_their_prompts_job_indices(tmp_path: Path, decoder: Path) -> None:
    tokens = torch.randint(0, V, (10, 9))
    lengths = torch.tensor([2, 3, 9, 1, 4, 4, 2, 2, 1, 3])
    prompts = {"tokens": tokens, "lengths": lengths}
    job, tasks, blobs = plan(
        tmp_path, decoder, prompts, shard_prompts=4, seed=5, verification=VerificationSpec(decoys=0)
    )
    assert [t.rows for t in tasks] == [4, 4, 2]
    shard = load_tensors(blobs.path_for(tasks[1].input.sha256))
    assert shard["index"].tolist() == [4, 5, 6, 7]
    assert shard["tokens"].shape == (4, 4)  # trimmed to the shard's longest prompt
    assert torch.equal(shard["tokens"], tokens[4:8, :4]) and torch.equal(shard["lengths"], lengths[4:8])
    assert '"task_kind": "generation"' in job.settings_json and '"seed": 5' in job.settings_json


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({"tokens": torch.zeros(3, 4, dtype=torch.int64)}, "lengths"),
        ({"tokens": torch.full((3, 4), V), "lengths": torch.tensor([1, 2, 3])}, "vocabulary"),
        ({"tokens": torch.zeros(3, 4, dtype=torch.int64), "lengths": torch.tensor([1, 5, 3])}, "length"),
        ({"tokens": torch.zeros(0, 4, dtype=torch.int64), "lengths": torch.zeros(0, dtype=torch.int64)}, "zero"),
    ],
)
def test_bad_prompt_files_are_refused(
    tmp_path: Path, decoder: Path, prompts: dict[str, torch.Tensor], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        plan(tmp_path, decoder, prompts)


def test_an_output_that_is_not_a_generation_result_is_rejected(tmp_path: Path) -> None:
    kind = GenerationKind(Replays(), None)  # type: ignore[arg-type]
    task = TaskRecord("t", "j", 0, "running", "generation", 1, "n", None, BlobRef("00" * 32, 0), 2)
    good = {
        "tokens": torch.zeros(2, 3, dtype=torch.int64),
        "logprobs": torch.zeros(2, 3),
        "lengths": torch.ones(2, dtype=torch.int64),
    }
    save_tensors(good, tmp_path / "good.safetensors")
    assert kind.check_output(task, None, tmp_path / "good.safetensors") == 2  # type: ignore[arg-type]
    save_tensors({"output": torch.zeros(2, 3)}, tmp_path / "bad.safetensors")
    with pytest.raises(Rejected, match="tokens, logprobs and lengths"):
        kind.check_output(task, None, tmp_path / "bad.safetensors")  # type: ignore[arg-type]
    (tmp_path / "junk").write_bytes(b"junk")
    with pytest.raises(Rejected):
        kind.check_output(task, None, tmp_path / "junk")  # type: ignore[arg-type]


def test_decoys_are_carved_out_of_generation_shards_in_prompt_order(tmp_path: Path, decoder: Path) -> None:
    tokens = torch.randint(0, V, (240, 5))
    lengths = torch.full((240,), 5)
    prompts = {"tokens": tokens, "lengths": lengths}
    job, tasks, blobs = plan(
        tmp_path, decoder, prompts, shard_prompts=80, verification=VerificationSpec(spot_rows=1, decoys=1)
    )
    assert sorted(t.rows for t in tasks if t.decoy_unit_rows) == [1, 1, 1]  # D = T decoys of m = 1 prompt
    assert all(t.decoy_unit_rows == 80 for t in tasks if t.decoy_unit_rows) and sum(t.rows for t in tasks) == 240
    indices = [i for t in tasks for i in load_tensors(blobs.path_for(t.input.sha256))["index"].tolist()]
    assert indices == list(range(240))  # every prompt once, in order: the result assembles as before
    assert json.loads(job.verification_json)["spot_rows"] == 1  # every check is a decoy's size
