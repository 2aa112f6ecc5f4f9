"""Checking a claimed decode without decoding it again: teacher-forced scoring.

A generation result claims, per prompt, the tokens the decoding loop (generation.decode) chose.
Deciding whether the loop would choose them needs no loop: the decoder is causal, so one
forward pass over prompt + claimed tokens gives, at each position, the logits the loop had at
that step, as long as the claimed tokens before it are right. Walking the steps in order with
each prompt's own generator (one draw per step, as the loop draws), the first claimed token the
loop would not have chosen is found at its own step, from the logits the loop had there. So a
claim scores as consistent only if the loop reproduces it token for token, stop tokens and
lengths included; its log-probabilities come from the same logits, for the caller to compare
within tolerance. The cost is one forward pass per prompt instead of one per generated token.

The coordinator's referee confirms checks this way and decodes only when scoring does not
confirm everyone (coordinator/services/verification/manager.py). Numerically, the logits come
from one longer forward pass instead of several shorter ones: equal within float rounding, as
a prompt's logits are in another batch. Rounding that flips a near-tie makes an honest claim
fail to score (the caller then decodes); a claim that scores is one the loop gives up to such
rounding, which nobody can steer.
"""

from __future__ import annotations

import os

import torch

from tensorgrid.errors import InvalidTensorFile, TensorGridError
from tensorgrid.workloads.generation import (
    PAD,
    DecodeSettings,
    check_prompts,
    choose_tokens,
    forward_logits,
    seeds_of,
)
from tensorgrid.workloads.inference import pick_device
from tensorgrid.workloads.model import load_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors

__all__ = ["score", "score_generation"]

Claim = dict[str, torch.Tensor]  # a generation output's rows: tokens, logprobs, lengths


@torch.no_grad()
def score(
    module: torch.nn.Module,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    seeds: torch.Tensor,
    claim: Claim,
    s: DecodeSettings,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [n, max_new], log-probs [n, max_new], lengths [n], consistent [n] bool) of one batch,
    prompt i sampling with the seed seeds[i] (as in generation.decode).

    Row i is consistent when the loop, given prompt i, would choose claim["tokens"][i] at every
    one of its claim["lengths"][i] steps and stop exactly there (a stop token, or max_new).
    ids and log-probs are this function's own choices and the model's log-probabilities of
    them; a consistent row's ids equal its claim (PAD past its length)."""
    n, steps = tokens.shape[0], s.max_new_tokens
    claimed, claimed_n = claim["tokens"], claim["lengths"]
    out_ids = torch.full((n, steps), PAD, dtype=torch.int64)
    out_lp = torch.zeros(n, steps, dtype=torch.float32)
    ok = torch.zeros(n, dtype=torch.bool)
    if claimed.dtype != torch.int64 or claimed.shape != (n, steps) or claimed_n.shape != (n,):
        return out_ids, out_lp, torch.zeros(n, dtype=torch.int64), ok  # not this batch's shape
    generated = claimed_n.to(torch.int64).clamp(1, steps)
    ok = generated == claimed_n
    # the sequence the loop ran last: the prompt, then every claimed token but the last
    width = int((lengths + generated).max()) - 1
    seq = torch.zeros(n, width, dtype=torch.int64)
    given = min(tokens.shape[1], width)
    seq[:, :given] = tokens[:, :given]
    t = torch.arange(steps)
    fed = t[None, :] < (generated - 1)[:, None]
    rows = torch.arange(n)[:, None].expand(n, steps)
    seq[rows[fed], (lengths[:, None] + t[None, :])[fed]] = claimed[fed].clamp(0, s.vocab_size - 1)
    logits = forward_logits(module, seq.to(device), s.vocab_size)
    gens = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
    stops = torch.tensor(sorted(set(s.stop_tokens)), dtype=torch.int64)
    active = torch.nonzero(ok).flatten()
    for step in range(steps):
        active = active[generated[active] > step]
        if len(active) == 0:
            break
        at = (lengths[active] - 1 + step).to(device)
        last = logits[active.to(device), at].float().cpu()
        chosen = choose_tokens(last, s, [gens[int(i)] for i in active])
        out_ids[active, step] = chosen
        out_lp[active, step] = torch.log_softmax(last, dim=-1).gather(1, chosen[:, None])[:, 0]
        stopped = torch.isin(chosen, stops) if len(stops) else torch.zeros(len(active), dtype=torch.bool)
        ends = generated[active] == step + 1
        # wrong token; a stop token before the claimed end; a claimed end short of max_new without one
        wrong = (chosen != claimed[active, step]) | (stopped & ~ends)
        wrong |= ends & ~stopped & (generated[active] < steps)
        ok[active[wrong]] = False
        active = active[~wrong]
    return out_ids, out_lp, generated, ok


def score_generation(
    model_path: str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    claim_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    settings: DecodeSettings,
    *,
    device: str = "auto",
    module: torch.nn.Module | None = None,
) -> list[bool]:
    """Score the claimed output `claim_path` of the prompt file `input_path` (its rows in the
    same order) in forward batches of settings.batch_size, as the task ran; write the scored
    tokens, log-probs and lengths (generation's output format) to output_path. Per prompt:
    whether the claim is consistent (see score). A claim file that is not a generation output
    of these prompts scores inconsistent throughout."""
    tensors = load_tensors(input_path)
    n = check_prompts(tensors, settings.vocab_size)
    if n == 0:
        raise InvalidTensorFile("the prompt file has no prompts")
    try:
        claim = load_tensors(claim_path)
    except TensorGridError:
        claim = {}
    if sorted(claim) != ["lengths", "logprobs", "tokens"] or any(v.shape[:1] != (n,) for v in claim.values()):
        claim = {"tokens": torch.zeros(n, 0, dtype=torch.int64), "lengths": torch.zeros(n, dtype=torch.int64)}
    target = pick_device(device)
    if module is None:
        module = load_program(model_path, target)
    seeds = seeds_of(tensors, settings)
    step = n if settings.batch_size <= 0 else settings.batch_size
    parts = []
    for a in range(0, n, step):
        b = min(a + step, n)
        lengths = tensors["lengths"][a:b]
        part = {name: claim[name][a:b] for name in ("tokens", "lengths")}
        tokens = tensors["tokens"][a:b, : int(lengths.max())]
        parts.append(score(module, tokens, lengths, seeds[a:b], part, settings, target))
    ids, logprobs, generated, ok = (torch.cat(p) for p in zip(*parts, strict=True))
    save_tensors({"tokens": ids, "logprobs": logprobs, "lengths": generated}, output_path)
    return [bool(x) for x in ok]
