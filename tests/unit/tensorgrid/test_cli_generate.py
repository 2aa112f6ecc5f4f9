"""`tensorgrid job submit-generate`: flags become GenerationSpec fields, defaults come from the spec."""

from __future__ import annotations

import argparse

from tensorgrid import cli, config
from tensorgrid.cli_generate import generation_settings, rate_line
from tensorgrid.spec import GenerationSpec, VerificationSpec
from tensorgrid.types import BlobRef

REF = BlobRef("ab" * 32, 1)
BASE = ("job", "submit-generate", "--model", "m.pt2", "--prompts", "p.safetensors", "--vocab-size", "96")


def parse(*argv: str) -> argparse.Namespace:
    return config.parse_args(cli.build_parser(), list(argv), cli.SETTINGS, env={})


def test_defaults_are_the_spec_defaults() -> None:
    ns = parse(*BASE)
    assert generation_settings(ns) == {}
    assert ns.vocab_size == 96


def test_flags_become_spec_fields() -> None:
    ns = parse(
        *BASE,
        *("--max-new-tokens", "20", "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9", "--seed", "3"),
        *("--stop-token", "1", "--stop-token", "2", "--shard-prompts", "16", "--verification", "none"),
    )
    spec = GenerationSpec(model=REF, prompts=REF, vocab_size=96, nonce="n", **generation_settings(ns))
    assert spec == GenerationSpec(
        model=REF,
        prompts=REF,
        vocab_size=96,
        nonce="n",
        max_new_tokens=20,
        temperature=0.7,
        top_k=5,
        top_p=0.9,
        seed=3,
        stop_tokens=(1, 2),
        shard_prompts=16,
        verification=VerificationSpec(mode="none"),
    )


def test_help_shows_the_spec_defaults() -> None:
    text = cli.build_parser()._subparsers._group_actions[0].choices["job"]  # type: ignore[union-attr]
    helps = text._subparsers._group_actions[0].choices["submit-generate"].format_help()
    assert f"(default: {GenerationSpec.max_new_tokens})" in helps and "(default: 0.0)" in helps


def test_rate_line() -> None:
    assert rate_line(8, 16, 10, 2.0) == "prompts 8/16, ≤ 40.0 tokens/s after 2.0s"
    assert rate_line(16, 16, 10, 4.0, tokens=100) == "prompts 16/16, 100 tokens in 4.0s: 25.0 tokens/s"
