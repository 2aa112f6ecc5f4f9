"""The generation kind at intake and on receipt: shards carry their prompts' seeds (never their
positions, nor the job's seed), a check cannot be told from a shard by its tensors, bad prompt
files and foreign outputs are refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from coordinator.config import Limits
from coordinator.errors import Rejected
from coordinator.kinds.generation import NAME, GenerationKind
from coordinator.repositories.tasks import TaskRecord
from coordinator.services.verification.manager import Verification
from tensorgrid.blobs import BlobStore
from tensorgrid.errors import SpecError
from tensorgrid.spec import GenerationSpec, VerificationSpec, canonical_json, spec_hash
from tensorgrid.types import BlobRef
from tensorgrid.workloads.prompts import prompt_seed
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.decoders import export_decoder, tiny_decoder

V = 50


class Replays:
    """The part of Verification a kind registers with: its replays and its measures (never run here)."""

    rt: Any = None
    blobs: Any = None

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.scores: list[str] = []
        self.measured: list[str] = []  # task kinds whose memory claims it measures

    def add_replay(self, kind: str, replay: Any, score: Any = None) -> None:
        self.kinds.append(kind)
        if score is not None:
            self.scores.append(kind)

    def add_measure(self, runs: str, measure: Any, task_kinds: tuple[str, ...]) -> None:
        self.measured.extend(task_kinds)


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
    # the referee learns to replay and score them, and to measure their memory
    assert replays.kinds == replays.scores == replays.measured == ["generation"]
    spec = GenerationSpec(
        model=blobs.put_file(decoder), prompts=put(blobs, prompts, tmp_path), vocab_size=V, **settings
    )
    raw = canonical_json(spec)
    job, tasks = kind.plan(spec, raw, "0x" + "11" * 20, spec_hash(raw), "ab" * 32, blobs, Limits())
    return job, tasks, blobs


def test_shards_carry_their_prompts_seeds_and_tasks_no_job_seed(tmp_path: Path, decoder: Path) -> None:
    tokens = torch.randint(0, V, (10, 9))
    lengths = torch.tensor([2, 3, 9, 1, 4, 4, 2, 2, 1, 3])
    prompts = {"tokens": tokens, "lengths": lengths}
    job, tasks, blobs = plan(
        tmp_path, decoder, prompts, shard_prompts=4, seed=5, verification=VerificationSpec(decoys=0)
    )
    assert [t.rows for t in tasks] == [4, 4, 2]
    shard = load_tensors(blobs.path_for(tasks[1].input.sha256))
    assert sorted(shard) == ["lengths", "seeds", "tokens"]
    assert shard["seeds"].tolist() == [prompt_seed(5, i) for i in range(4, 8)]  # what prompts 4..7 sampled with
    assert shard["tokens"].shape == (4, 4)  # trimmed to the shard's longest prompt
    assert torch.equal(shard["tokens"], tokens[4:8, :4]) and torch.equal(shard["lengths"], lengths[4:8])
    settings = json.loads(job.settings_json)
    assert settings["task_kind"] == "generation" and "seed" not in settings["generation"]


PROMPTS = {"tokens": torch.zeros(3, 4, dtype=torch.int64), "lengths": torch.tensor([1, 2, 3])}


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({"tokens": torch.zeros(3, 4, dtype=torch.int64)}, "lengths"),
        ({"tokens": torch.full((3, 4), V), "lengths": torch.tensor([1, 2, 3])}, "vocabulary"),
        ({"tokens": torch.zeros(3, 4, dtype=torch.int64), "lengths": torch.tensor([1, 5, 3])}, "length"),
        ({"tokens": torch.zeros(0, 4, dtype=torch.int64), "lengths": torch.zeros(0, dtype=torch.int64)}, "zero"),
        # a submitter does not choose the seeds: they derive from the spec's seed and the positions
        ({**PROMPTS, "seeds": torch.arange(3)}, "may not carry 'seeds'"),
        ({**PROMPTS, "index": torch.arange(3)}, "no 'index'"),
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
    seeds = [i for t in tasks for i in load_tensors(blobs.path_for(t.input.sha256))["seeds"].tolist()]
    assert seeds == [prompt_seed(0, i) for i in range(240)]  # every prompt once, in order: assembled as before
    assert json.loads(job.verification_json)["spot_rows"] == 1  # every check is a decoy's size


class _Runtime:
    """Runs Verification's repository calls and blob work inline."""

    @staticmethod
    async def db(fn: Any, *args: Any) -> Any:
        return fn(*args)

    work = db


def _verification(blobs: BlobStore, job: Any, tasks_total: int) -> Verification:
    """The real check-building code (Verification.examine) over a job's stored policy, a new node."""
    store = SimpleNamespace(
        verification=SimpleNamespace(
            check_info=lambda task_id, node: None,
            job_policy=lambda job_id: (json.loads(job.verification_json), 0),
            streak=lambda node, job_id, after: 0,
        ),
        jobs=SimpleNamespace(get_job=lambda job_id: SimpleNamespace(tasks_total=tasks_total)),
    )
    return Verification(_Runtime(), store, blobs, b"secret", None)  # type: ignore[arg-type]


def test_a_check_or_canary_cannot_be_told_from_a_shard_by_its_tensors(tmp_path: Path, decoder: Path) -> None:
    """A node seeing a check (a sample of another node's shard) or a canary (a shard re-ordered)
    finds the tensors any shard has, with the same dtypes, and no positions: no tensor is a run of
    prompt indices, or even within the job's prompt count, so it can neither tell a check by
    scattered job indices nor learn which of the job's prompts it holds; the job's seed is not in
    the task's settings, so the seeds cannot be mapped back to positions."""
    n = 120
    prompts = {"tokens": torch.randint(0, V, (n, 6)), "lengths": torch.randint(1, 7, (n,))}
    policy = VerificationSpec(spot_rows=3, canary_rate=1.0, decoys=0)
    job, tasks, blobs = plan(tmp_path, decoder, prompts, shard_prompts=40, seed=987654, verification=policy)
    verification = _verification(blobs, job, len(tasks))
    node = "0x" + "22" * 20
    shards, checks = [], []
    for t in tasks:
        record = TaskRecord(t.task_id, "ab" * 32, t.index, "running", NAME, 1, node, None, t.input, t.rows)
        check, verdict = asyncio.run(verification.examine(record, node, t.input))
        assert check is not None and check.canary is not None and verdict is None  # a new node: always checked
        shard = load_tensors(blobs.path_for(t.input.sha256))
        sample = load_tensors(blobs.path_for(check.input.sha256))
        canary = load_tensors(blobs.path_for(check.canary.input.sha256))
        assert len(check.rows) < t.rows and torch.equal(sample["seeds"], shard["seeds"][list(check.rows)])
        assert torch.equal(canary["seeds"], shard["seeds"][list(check.canary.rows)])
        shards.append(shard)
        checks += [sample, canary]
    layout = {name: tensor.dtype for name, tensor in shards[0].items()}
    for tensors in shards + checks:
        assert {name: tensor.dtype for name, tensor in tensors.items()} == layout
        for name, tensor in tensors.items():
            if name == "tokens" or tensor.dtype != torch.int64:
                continue
            values = tensor.tolist()
            run = list(range(values[0], values[0] + len(values)))
            assert values != run and values != sorted(run, reverse=True), f"{name!r} is a run of positions"
            if name != "lengths":  # lengths are prompt lengths; anything else must not look like an index
                assert min(values) >= n, f"{name!r} holds values within the job's prompt indices"
    settings = job.settings_json
    assert "987654" not in settings and "seed" not in json.loads(settings)["generation"]
