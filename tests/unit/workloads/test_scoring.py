"""Scoring a claimed decode (what the referee confirms a generation check with): an honest decode
scores consistent on any sample of its prompts, in another batch, with the same log-probs within
tolerance, in one forward pass per batch; any changed token, moved stop or other seed does not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from coordinator.services.verification.compare import load_rows, rows_match
from tensorgrid.workloads.arrays import from_torch
from tensorgrid.workloads.generation import DecodeSettings, decode, run_generation
from tensorgrid.workloads.model import load_program
from tensorgrid.workloads.prompts import job_seeds
from tensorgrid.workloads.scoring import score, score_generation
from tensorgrid.workloads.tensorfile import gather_rows, save_tensors
from tests.decoders import export_decoder, tiny_decoder

V, N, NEW = 50, 12, 10
CPU = torch.device("cpu")
SAMPLED = DecodeSettings(NEW, V, temperature=0.9, top_k=20, top_p=0.95, seed=3, stop_tokens=(7, 11))
SETTINGS = [DecodeSettings(NEW, V), SAMPLED, DecodeSettings(NEW, V, temperature=1.5, seed=9, stop_tokens=(3,))]


class Counting(torch.nn.Module):
    """The decoder, counting its forward passes."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.module(tokens)


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("decoder") / "decoder.pt2"
    export_decoder(tiny_decoder(), path)
    return path, load_program(path, CPU)


def prompts() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, 9, (N,), generator=g)
    return torch.randint(0, V, (N, 8), generator=g), lengths, torch.from_numpy(job_seeds(SAMPLED.seed, 40, 40 + N))


def claim_of(ids: torch.Tensor, n: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"tokens": ids, "lengths": n}


@pytest.mark.parametrize("s", SETTINGS, ids=["greedy", "top-k-top-p-stops", "sampled-stop"])
def test_an_honest_decode_scores_on_a_sample_in_another_batch(
    program: tuple[Path, torch.nn.Module], s: DecodeSettings
) -> None:
    _, module = program
    tokens, lengths, seeds = prompts()
    ids, lp, n = decode(module, tokens, lengths, seeds, s, CPU)  # the node's batch: all N prompts
    rows = [9, 2, 6]  # the check's sample, in the order a check input holds it
    counting = Counting(module)
    got = score(counting, tokens[rows], lengths[rows], seeds[rows], claim_of(ids[rows], n[rows]), s, CPU)
    assert got[3].tolist() == [True, True, True]
    assert counting.calls == 1  # one forward pass, not one per generated token
    claimed = {"tokens": ids[rows], "logprobs": lp[rows], "lengths": n[rows]}
    scored = dict(zip(("tokens", "logprobs", "lengths"), got[:3], strict=True))
    assert rows_match({k: from_torch(v) for k, v in claimed.items()}, {k: from_torch(v) for k, v in scored.items()})


def test_any_changed_token_fails_at_its_prompt_only(program: tuple[Path, torch.nn.Module]) -> None:
    _, module = program
    tokens, lengths, seeds = prompts()
    ids, _, n = decode(module, tokens, lengths, seeds, SAMPLED, CPU)
    for prompt in range(N):
        for step in {0, int(n[prompt]) // 2, int(n[prompt]) - 1}:  # first, middle and last token
            changed = ids.clone()
            changed[prompt, step] = (changed[prompt, step] + 1) % V
            ok = score(module, tokens, lengths, seeds, claim_of(changed, n), SAMPLED, CPU)[3]
            assert ok.tolist() == [i != prompt for i in range(N)], (prompt, step)


def test_lengths_stops_and_seeds_must_be_the_loops(program: tuple[Path, torch.nn.Module]) -> None:
    _, module = program
    tokens, lengths, seeds = prompts()
    ids, _, n = decode(module, tokens, lengths, seeds, SAMPLED, CPU)
    assert (n < NEW).any() and (n == NEW).any()  # some prompts stopped early
    shorter = ids.clone()  # cut before the end: the last token kept is no stop token
    assert not score(module, tokens, lengths, seeds, claim_of(shorter, n - 1), SAMPLED, CPU)[3][n > 1].any()
    longer = ids.clone()  # a prompt that stopped, claimed to go on
    stopped = n < NEW
    assert not score(module, tokens, lengths, seeds, claim_of(longer, n + 1), SAMPLED, CPU)[3][stopped].any()
    assert not score(module, tokens, lengths, seeds, claim_of(ids, n * 0), SAMPLED, CPU)[3].any()  # no tokens
    assert not score(module, tokens, lengths, seeds + 1, claim_of(ids, n), SAMPLED, CPU)[3].any()  # other seeds
    wide = torch.zeros(N, NEW + 1, dtype=torch.int64)
    assert not score(module, tokens, lengths, seeds, claim_of(wide, n), SAMPLED, CPU)[3].any()  # other settings
    early = ids.clone()  # a stop token where the loop would not have chosen one ends nothing early
    early[:, 0] = 7
    ok = score(module, tokens, lengths, seeds, claim_of(early, n), SAMPLED, CPU)[3]
    assert ok.tolist() == (ids[:, 0] == 7).tolist()


def test_score_generation_scores_a_files_claim_in_the_tasks_batches(
    program: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, module = program
    tokens, lengths, seeds = prompts()
    save_tensors({"tokens": tokens, "lengths": lengths, "seeds": seeds}, tmp_path / "shard.safetensors")
    run_generation(path, tmp_path / "shard.safetensors", tmp_path / "out.safetensors", SAMPLED, device="cpu")
    rows = [1, 4, 5, 10, 11]  # a check: the sampled prompts and the subject's rows for them
    gather_rows(tmp_path / "shard.safetensors", rows, tmp_path / "check.safetensors")
    gather_rows(tmp_path / "out.safetensors", rows, tmp_path / "claim.safetensors")
    batched = dataclasses.replace(SAMPLED, batch_size=2)
    for s in (SAMPLED, batched):
        scored = tmp_path / "scored.safetensors"
        args = (path, tmp_path / "check.safetensors", tmp_path / "claim.safetensors", scored, s)
        assert score_generation(*args, device="cpu", module=module) == [True] * 5
        assert rows_match(load_rows(tmp_path / "claim.safetensors"), load_rows(scored))
    save_tensors({"output": torch.zeros(5, 3)}, tmp_path / "junk.safetensors")  # not a generation output
    junk = (path, tmp_path / "check.safetensors", tmp_path / "junk.safetensors", tmp_path / "j.safetensors", SAMPLED)
    assert score_generation(*junk, device="cpu", module=module) == [False] * 5
