"""The decoding loop: greedy is the argmax loop, seeds reproduce, stop tokens and lengths hold,
and a prompt's tokens do not depend on the other prompts of its batch (what spot-checks need)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coordinator.services.verification.compare import rows_match
from tensorgrid.errors import ExecutionError, InvalidTensorFile
from tensorgrid.workloads.arrays import Array, from_torch
from tensorgrid.workloads.generation import DecodeSettings, check_prompts, decode, prompt_seed, run_generation
from tensorgrid.workloads.model import load_program
from tensorgrid.workloads.prompts import job_seeds
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.decoders import export_decoder, tiny_decoder

V = 50
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("decoder") / "decoder.pt2"
    export_decoder(tiny_decoder(), path)
    return path, load_program(path, CPU)


def prompts(n: int = 6, width: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    return torch.randint(0, V, (n, width), generator=g), lengths


def seeds(seed: int, start: int = 0, end: int = 6) -> torch.Tensor:
    """The seeds of prompts start..end-1 of a job seeded `seed` (what a shard carries)."""
    return torch.from_numpy(job_seeds(seed, start, end))


def argmax_loop(module: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(module(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]


def test_greedy_equals_the_argmax_loop(program: tuple[Path, torch.nn.Module]) -> None:
    _, module = program
    tokens, lengths = prompts()
    ids, logprobs, generated = decode(module, tokens, lengths, seeds(0), DecodeSettings(9, V), CPU)
    for i in range(6):
        want = argmax_loop(module, tokens[i, : lengths[i]].tolist(), 9)
        assert ids[i].tolist() == want
    assert generated.tolist() == [9] * 6
    assert bool((logprobs < 0).all()) and bool((logprobs > -20).all())


def test_logprobs_are_the_models_own(program: tuple[Path, torch.nn.Module]) -> None:
    _, module = program
    tokens, lengths = prompts(1)
    s = DecodeSettings(3, V, temperature=0.7, top_k=5, seed=4)
    ids, logprobs, _ = decode(module, tokens, lengths, seeds(4, 0, 1), s, CPU)
    seq = tokens[0, : lengths[0]].tolist()
    with torch.no_grad():
        for step in range(3):
            want = torch.log_softmax(module(torch.tensor([seq]))[0, -1], -1)[ids[0, step]]
            assert abs(float(want) - float(logprobs[0, step])) < 1e-5
            seq.append(int(ids[0, step]))


def sampled(module: torch.nn.Module, seed: int, start: int = 0) -> torch.Tensor:
    tokens, lengths = prompts()
    s = DecodeSettings(10, V, temperature=1.0, top_p=0.95, seed=seed)
    return decode(module, tokens, lengths, seeds(seed, start, start + 6), s, CPU)[0]


def test_same_seed_same_tokens_different_seed_different(program: tuple[Path, torch.nn.Module]) -> None:
    _, module = program
    assert torch.equal(sampled(module, 7), sampled(module, 7))
    assert not torch.equal(sampled(module, 7), sampled(module, 8))
    # a prompt's seed derives from its index in the job: other indices, other samples
    assert not torch.equal(sampled(module, 7), sampled(module, 7, 100))
    assert prompt_seed(7, 0) != prompt_seed(7, 1) and prompt_seed(7, 1) != prompt_seed(8, 1)
    assert seeds(7, 2, 4).tolist() == [prompt_seed(7, 2), prompt_seed(7, 3)]


def test_a_shards_seeds_give_the_tokens_of_its_prompts_in_the_whole_job(
    program: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    """A shard carries its prompts' seeds, not their positions, and decodes with no job seed:
    its rows are the rows a local run of the whole prompt file gives."""
    path, _ = program
    tokens, lengths = prompts(9)
    save_tensors({"tokens": tokens, "lengths": lengths}, tmp_path / "job.safetensors")
    s = DecodeSettings(6, V, temperature=1.0, top_k=10, seed=21)
    run_generation(path, tmp_path / "job.safetensors", tmp_path / "job.out", s, device="cpu")
    rows = [7, 2, 3]
    shard = {"tokens": tokens[rows], "lengths": lengths[rows], "seeds": seeds(21, 0, 9)[rows]}
    save_tensors(shard, tmp_path / "shard.safetensors")
    blind = DecodeSettings(6, V, temperature=1.0, top_k=10)  # what a node is sent: no job seed
    run_generation(path, tmp_path / "shard.safetensors", tmp_path / "shard.out", blind, device="cpu")
    whole, part = load_tensors(tmp_path / "job.out"), load_tensors(tmp_path / "shard.out")
    assert torch.equal(part["tokens"], whole["tokens"][rows]) and torch.equal(part["lengths"], whole["lengths"][rows])


def test_a_prompts_tokens_do_not_depend_on_its_batch(program: tuple[Path, torch.nn.Module]) -> None:
    """What a spot-check relies on: re-running a sample of prompts gives their tokens again."""
    _, module = program
    tokens, lengths = prompts()
    s = DecodeSettings(10, V, temperature=0.9, top_k=20, seed=3)
    ids, lp, n = decode(module, tokens, lengths, seeds(3), s, CPU)
    rows = [4, 1]
    sub = decode(module, tokens[rows], lengths[rows], seeds(3)[rows], s, CPU)
    full = {"tokens": ids[rows], "logprobs": lp[rows], "lengths": n[rows]}
    again = dict(zip(("tokens", "logprobs", "lengths"), sub, strict=True))
    assert rows_match(arrays(full), arrays(again))
    corrupted = dict(full, tokens=full["tokens"].clone())
    corrupted["tokens"][0, 3] = (corrupted["tokens"][0, 3] + 1) % V
    assert not rows_match(arrays(corrupted), arrays(again))


def test_stop_tokens_end_a_prompt_and_set_its_length(program: tuple[Path, torch.nn.Module]) -> None:
    _, module = program
    tokens, lengths = prompts()
    free, _, _ = decode(module, tokens, lengths, seeds(0), DecodeSettings(9, V), CPU)
    stop = int(free[0, 2])  # prompt 0 emits it at step 2 (or earlier)
    ids, logprobs, generated = decode(module, tokens, lengths, seeds(0), DecodeSettings(9, V, stop_tokens=(stop,)), CPU)
    for i in range(6):
        row = free[i].tolist()
        n = row.index(stop) + 1 if stop in row else 9
        assert int(generated[i]) == n
        assert ids[i, :n].tolist() == row[:n]
        assert ids[i, n:].eq(0).all() and logprobs[i, n:].eq(0).all()
    assert int(generated[0]) <= 3


def test_top_k_one_is_greedy(program: tuple[Path, torch.nn.Module]) -> None:
    _, module = program
    tokens, lengths = prompts()
    greedy = decode(module, tokens, lengths, seeds(0), DecodeSettings(6, V), CPU)[0]
    top1 = decode(module, tokens, lengths, seeds(5), DecodeSettings(6, V, temperature=2.0, top_k=1, seed=5), CPU)[0]
    assert torch.equal(greedy, top1)


def test_run_generation_writes_ids_logprobs_lengths_and_batches_agree(
    program: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, _ = program
    tokens, lengths = prompts(9)
    save_tensors({"tokens": tokens, "lengths": lengths}, tmp_path / "p.safetensors")
    s = DecodeSettings(5, V, temperature=1.0, seed=11)
    stats = run_generation(path, tmp_path / "p.safetensors", tmp_path / "a.safetensors", s, device="cpu")
    batched = DecodeSettings(5, V, temperature=1.0, seed=11, batch_size=4)
    run_generation(path, tmp_path / "p.safetensors", tmp_path / "b.safetensors", batched, device="cpu")
    a, b = load_tensors(tmp_path / "a.safetensors"), load_tensors(tmp_path / "b.safetensors")
    assert a["tokens"].shape == (9, 5) and a["tokens"].dtype == torch.int64
    assert a["logprobs"].dtype == torch.float32 and a["lengths"].tolist() == [5] * 9
    assert stats.rows == 9 and stats.tokens == 45
    assert rows_match(arrays(a), arrays(b))


def test_bad_prompt_files_are_refused() -> None:
    tokens, lengths = prompts()
    with pytest.raises(InvalidTensorFile, match="lengths"):
        check_prompts({"tokens": tokens}, V)
    with pytest.raises(InvalidTensorFile, match="vocabulary"):
        check_prompts({"tokens": tokens + V, "lengths": lengths}, V)
    with pytest.raises(InvalidTensorFile, match="length"):
        check_prompts({"tokens": tokens, "lengths": lengths * 0}, V)
    with pytest.raises(InvalidTensorFile, match="int64"):
        check_prompts({"tokens": tokens.float(), "lengths": lengths}, V)
    assert check_prompts({"tokens": tokens, "lengths": lengths}, V) == 6
    shard = {"tokens": tokens, "lengths": lengths, "seeds": seeds(0)}
    assert check_prompts(shard, V) == 6  # a shard carries its prompts' seeds
    with pytest.raises(InvalidTensorFile, match="may not carry 'seeds'"):  # a submitter does not choose them
        check_prompts(shard, V, submitted=True)
    with pytest.raises(InvalidTensorFile, match="'seeds' must be int64"):
        check_prompts({**shard, "seeds": seeds(0).int()}, V)
    with pytest.raises(InvalidTensorFile, match="non-negative"):
        check_prompts({**shard, "seeds": -seeds(0)}, V)
    with pytest.raises(InvalidTensorFile, match="no 'index'"):  # the shard format before seeds
        check_prompts({"tokens": tokens, "lengths": lengths, "index": torch.arange(6)}, V)


def test_a_decoder_whose_vocabulary_differs_fails_clearly(program: tuple[Path, torch.nn.Module]) -> None:
    _, module = program
    tokens, lengths = prompts()
    with pytest.raises(ExecutionError, match="expected logits"):
        decode(module, tokens, lengths, seeds(0), DecodeSettings(2, V + 1), CPU)


def arrays(tensors: dict[str, torch.Tensor]) -> dict[str, Array]:
    """The coordinator's view of the tensors (its checks compare numpy arrays)."""
    return {name: from_torch(t) for name, t in tensors.items()}
