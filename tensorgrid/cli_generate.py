"""`tensorgrid job submit-generate`: a decoder and prompts in, generated tokens out, with a tokens/s line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tensorgrid import exitcodes
from tensorgrid.spec import DEVICES, VERIFY_MODES, GenerationSpec, VerificationSpec

# (flag, GenerationSpec field, type, help); a flag left out is left out of the spec (its default applies)
_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--max-new-tokens", "max_new_tokens", int, "tokens generated after each prompt, at most"),
    ("--temperature", "temperature", float, "0: greedy; above 0: sample"),
    ("--top-k", "top_k", int, "sample among the k most likely tokens (0: off)"),
    ("--top-p", "top_p", float, "sample within the smallest set holding this probability (1: off)"),
    ("--seed", "seed", int, "job seed; prompt i samples from its own generator seeded from (seed, i)"),
    ("--shard-prompts", "shard_prompts", int, "prompts per task"),
    ("--batch-size", "batch_size", int, "prompts per forward pass on a node (0: whole shard)"),
    ("--time-limit", "task_time_limit_s", int, "seconds a node may spend on one task"),
    ("--reward-wei", "reward_per_task_wei", int, "paid per accepted task from the job's escrow"),
)


def add_generate_parser(job: Any, common: argparse.ArgumentParser) -> None:
    g = job.add_parser(
        "submit-generate", parents=[common], help="upload a decoder and prompts, submit a text-generation job"
    )
    g.add_argument("--model", type=Path, required=True, help="decoder program (.pt2): tokens [B, T] → logits [B, T, V]")
    g.add_argument("--prompts", type=Path, required=True, help="safetensors: tokens [N, Tmax] int64 + lengths [N]")
    g.add_argument("--vocab-size", type=int, required=True, help="V, the size of the decoder's logits")
    for flag, field, kind, what in _FLAGS:
        g.add_argument(flag, type=kind, dest=field, help=f"{what} (default: {getattr(GenerationSpec, field)})")
    g.add_argument(
        "--stop-token", type=int, action="append", dest="stop_tokens", help="a token that ends a prompt (repeat)"
    )
    g.add_argument("--device", choices=DEVICES, help=f"(default: {GenerationSpec.device})")
    g.add_argument("--verification", choices=VERIFY_MODES, help=f"(default: {VerificationSpec.mode})")
    g.add_argument("--watch", action="store_true", help="follow progress (prompts, tokens/s) until the job ends")
    g.add_argument("-o", "--output", type=Path, help="with --watch: download the result here")


def generation_settings(ns: argparse.Namespace) -> dict[str, Any]:
    """The GenerationSpec fields the command was given."""
    settings = {field: getattr(ns, field) for _, field, _, _ in _FLAGS if getattr(ns, field) is not None}
    if ns.stop_tokens:
        settings["stop_tokens"] = tuple(ns.stop_tokens)
    if ns.device is not None:
        settings["device"] = ns.device
    if ns.verification is not None:
        settings["verification"] = VerificationSpec(mode=ns.verification)
    return settings


def rate_line(prompts_done: int, prompts: int, max_new: int, seconds: float, tokens: int | None = None) -> str:
    """`prompts a/b, ≤ t tokens/s` while running (finished shards × max_new_tokens: an upper bound,
    as stop tokens end prompts early); the exact rate once the result's lengths are known."""
    if tokens is not None:
        rate = tokens / max(seconds, 1e-9)
        return f"prompts {prompts_done}/{prompts}, {tokens} tokens in {seconds:.1f}s: {rate:.1f} tokens/s"
    bound = prompts_done * max_new / max(seconds, 1e-9)
    return f"prompts {prompts_done}/{prompts}, ≤ {bound:.1f} tokens/s after {seconds:.1f}s"


def cmd_submit_generate(ns: argparse.Namespace, client_for: Any) -> int:
    from tensorgrid.progress import byte_progress
    from tensorgrid.report import print_job
    from tensorgrid.workloads.tensorfile import load_tensors

    settings = generation_settings(ns)
    with client_for(ns) as client, byte_progress("uploading") as progress:
        job = client.submit_generation(ns.model, ns.prompts, vocab_size=ns.vocab_size, progress=progress, **settings)
    print(f"submitted generation job {job.job_id} ({job.tasks_total} tasks)")
    if not ns.watch:
        return exitcodes.OK
    prompts = int(load_tensors(ns.prompts)["lengths"].shape[0])
    shard = settings.get("shard_prompts", GenerationSpec.shard_prompts)
    max_new = settings.get("max_new_tokens", GenerationSpec.max_new_tokens)
    started = time.monotonic()
    with client_for(ns) as client:
        for ev in client.watch(job.job_id):
            if ev.kind == "completed":
                done = min(prompts, ev.tasks_done * shard)
                print(rate_line(done, prompts, max_new, time.monotonic() - started), file=sys.stderr, flush=True)
        final = client.job(job.job_id)
        elapsed = time.monotonic() - started
        print_job(final)
        if final.state.value != "succeeded":
            return exitcodes.JOB_FAILED
        if ns.output:
            client.result(job.job_id, ns.output)
            tokens = int(load_tensors(ns.output)["lengths"].sum())
            print(rate_line(prompts, prompts, max_new, elapsed, tokens))
            print(f"wrote {ns.output}")
    return exitcodes.OK
