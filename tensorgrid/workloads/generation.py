"""The decoding loop: prompts (token ids) through an exported decoder, one new token per step.

The program is a full-sequence decoder: int64 tokens [B, T] → logits [B, T, V] (a causal
language model; position t's logits may depend on tokens ≤ t only). Each step runs it over
every unfinished prompt, right-padded to the longest, and reads each prompt's logits at its
own last position, so padding never reaches a prompt's logits and a prompt's tokens do not
depend on which other prompts share its batch: a spot-check re-running a sample of prompts
gets the same tokens.

Sampling draws from one torch.Generator per prompt, seeded with the prompt's own seed, one
draw per step: prompt i of a job seeded s has the seed prompt_seed(s, i), which a shard carries
(`seeds`, written by the coordinator: a task tells neither its prompts' positions nor the job's
seed), and which a file without `seeds` (a whole job run locally) derives from settings.seed.
The same seed gives the same tokens on one device class. Greedy decoding (temperature 0) takes the first maximal logit.
Reported log-probabilities are the model's own (log-softmax of the raw logits, before
temperature, top-k or top-p), in float32.

Nothing here runs submitter code: the program is a vetted torch.export graph and the loop
is ours. This is what a node's child process runs per shard and what the local baseline
runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from tensorgrid.errors import ExecutionError, InvalidTensorFile
from tensorgrid.types import ErrorKind
from tensorgrid.workloads.inference import pick_device
from tensorgrid.workloads.model import load_program
from tensorgrid.workloads.prompts import check_prompts, job_seeds, prompt_seed
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors

__all__ = [
    "DecodeSettings",
    "GenerationStats",
    "check_prompts",
    "decode",
    "prompt_seed",
    "run_generation",
    "seeds_of",
]

PAD = 0  # generated ids and log-probs past a prompt's generated length


@dataclass(frozen=True)
class DecodeSettings:
    """How to decode: see docs/GENERATION.md. temperature 0 is greedy."""

    max_new_tokens: int
    vocab_size: int
    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    seed: int = 0  # the job's seed: only for a prompt file without `seeds` (see seeds_of)
    stop_tokens: tuple[int, ...] = ()
    batch_size: int = 0  # prompts per forward batch; 0: all of them

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecodeSettings:
        return cls(
            max_new_tokens=int(data["max_new_tokens"]),
            vocab_size=int(data["vocab_size"]),
            temperature=float(data.get("temperature", 0.0)),
            top_k=int(data.get("top_k", 0)),
            top_p=float(data.get("top_p", 1.0)),
            seed=int(data.get("seed", 0)),
            stop_tokens=tuple(int(t) for t in data.get("stop_tokens", ())),
            batch_size=int(data.get("batch_size", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "vocab_size": self.vocab_size,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop_tokens": list(self.stop_tokens),
            "batch_size": self.batch_size,
        }


@dataclass(frozen=True)
class GenerationStats:
    """Prompts decoded, tokens generated, and wall-clock seconds spent decoding."""

    rows: int
    tokens: int
    seconds: float


def seeds_of(tensors: Mapping[str, torch.Tensor], s: DecodeSettings) -> torch.Tensor:
    """int64 [N]: the sampling seed of each prompt of a prompt file: its `seeds` (a shard), or
    prompt_seed(s.seed, i) for prompt i (a whole job's file, which carries none)."""
    if "seeds" in tensors:
        return tensors["seeds"]
    return torch.from_numpy(job_seeds(s.seed, 0, int(tensors["lengths"].shape[0])))


def forward_logits(module: torch.nn.Module, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The decoder's logits [B, T, V] for tokens [B, T]; any failure is the task's (ExecutionError)."""
    try:
        logits = module(tokens)
    except torch.OutOfMemoryError as exc:
        raise ExecutionError(ErrorKind.OUT_OF_MEMORY, f"out of memory running the decoder: {exc}") from exc
    except Exception as exc:  # any failure inside a stranger's graph is a task failure, not ours
        raise ExecutionError(ErrorKind.PROGRAM_ERROR, f"the decoder failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(logits, list | tuple) and len(logits) == 1:
        logits = logits[0]
    want = [*tokens.shape, vocab_size]
    if not isinstance(logits, torch.Tensor) or list(logits.shape) != want:
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ExecutionError(ErrorKind.PROGRAM_ERROR, f"the decoder returned {got}; expected logits {want}")
    return logits


def _filter(logits: torch.Tensor, s: DecodeSettings) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on float32 logits [b, V]."""
    logits = logits / s.temperature
    if 0 < s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        ordered, order = torch.sort(logits, dim=-1, descending=True, stable=True)
        probs = torch.softmax(ordered, dim=-1)
        # drop a token once the more likely ones already hold top_p (the first always stays)
        drop = (torch.cumsum(probs, dim=-1) - probs) > s.top_p
        logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    return logits


def choose_tokens(logits: torch.Tensor, s: DecodeSettings, gens: list[torch.Generator]) -> torch.Tensor:
    """One token per row of float32 logits [b, V]: the first maximal one (greedy), or one draw
    from row i's own generator gens[i]. Each row's choice depends on its own logits only."""
    if s.temperature == 0.0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(_filter(logits, s), dim=-1)
    return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(gens)])


@torch.no_grad()
def decode(
    module: torch.nn.Module,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    seeds: torch.Tensor,
    s: DecodeSettings,
    device: torch.device,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [n, max_new], log-probs [n, max_new], generated lengths [n]) for one batch of prompts,
    prompt i sampling with the seed seeds[i] (s.seed is not read).

    on_step(step, rows, chosen), if given, is called after every decoding step with the rows
    (indices into this batch) that were still decoding and the token each of them chose, on
    CPU: a streaming caller sends tokens as they are made rather than at the end."""
    n = tokens.shape[0]
    width = int(lengths.max()) + s.max_new_tokens
    seq = torch.zeros(n, width, dtype=torch.int64, device=device)
    given = min(tokens.shape[1], width)
    seq[:, :given] = tokens[:, :given].to(device)
    cur = lengths.to(device).clone()
    out_ids = torch.full((n, s.max_new_tokens), PAD, dtype=torch.int64)
    out_lp = torch.zeros(n, s.max_new_tokens, dtype=torch.float32)
    gens = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
    stops = torch.tensor(sorted(set(s.stop_tokens)), dtype=torch.int64)
    active = torch.arange(n)
    for step in range(s.max_new_tokens):
        rows = active.to(device)
        span = int(cur[rows].max())
        logits = forward_logits(module, seq[rows, :span], s.vocab_size)
        last = logits[torch.arange(len(active), device=device), cur[rows] - 1].float().cpu()
        chosen = choose_tokens(last, s, [gens[int(i)] for i in active])
        logp = torch.log_softmax(last, dim=-1).gather(1, chosen[:, None])[:, 0]
        out_ids[active, step] = chosen
        out_lp[active, step] = logp
        seq[rows, cur[rows]] = chosen.to(device)
        cur[rows] += 1
        if on_step is not None:
            on_step(step, active, chosen)
        keep = ~torch.isin(chosen, stops) if len(stops) else torch.ones(len(active), dtype=torch.bool)
        active = active[keep]
        if len(active) == 0:
            break
    generated = (cur.cpu() - lengths).to(torch.int64)
    return out_ids, out_lp, generated


def run_generation(
    model_path: str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    settings: DecodeSettings,
    *,
    device: str = "auto",
    module: torch.nn.Module | None = None,
) -> GenerationStats:
    """Decode every prompt of a prompt file; save ids, log-probs and lengths to output_path.

    The prompt file holds `tokens` [N, Tmax] int64 and `lengths` [N] int64 (and, in a grid
    task, `seeds` [N] int64: each prompt's sampling seed; without it prompt i's seed is
    prompt_seed(settings.seed, i), as in the job). The output holds `tokens` [N, max_new_tokens]
    int64 (0 past each prompt's generated length), `logprobs` [N, max_new_tokens] float32 and
    `lengths` [N] int64.
    """
    tensors = load_tensors(input_path)
    n = check_prompts(tensors, settings.vocab_size)
    if n == 0:
        raise InvalidTensorFile("the prompt file has no prompts")
    target = pick_device(device)
    if module is None:
        module = load_program(model_path, target)
    seeds = seeds_of(tensors, settings)
    step = n if settings.batch_size <= 0 else settings.batch_size
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    started = time.perf_counter()
    with torch.no_grad():
        for a in range(0, n, step):
            b = min(a + step, n)
            lengths = tensors["lengths"][a:b]
            tokens = tensors["tokens"][a:b, : int(lengths.max())]
            parts.append(decode(module, tokens, lengths, seeds[a:b], settings, target))
    seconds = time.perf_counter() - started
    ids, logprobs, generated = (torch.cat(p) for p in zip(*parts, strict=True))
    save_tensors({"tokens": ids, "logprobs": logprobs, "lengths": generated}, output_path)
    return GenerationStats(rows=n, tokens=int(generated.sum()), seconds=seconds)
