"""Generation specs: strict parsing, clear errors, and bytes pinned from their first version."""

from __future__ import annotations

import json

import pytest

from tensorgrid.errors import SpecError
from tensorgrid.spec import GenerationSpec, canonical_json, parse_spec, spec_hash
from tensorgrid.types import BlobRef

REF = BlobRef("ab" * 32, 10)
PROMPTS = BlobRef("cd" * 32, 4096)


def spec_dict(**over: object) -> dict[str, object]:
    d = json.loads(canonical_json(GenerationSpec(model=REF, prompts=PROMPTS, vocab_size=50, nonce="g")))
    d.update(over)
    return d


def test_round_trip_is_canonical() -> None:
    spec = GenerationSpec(
        model=REF,
        prompts=PROMPTS,
        vocab_size=50,
        max_new_tokens=9,
        temperature=0.8,
        top_k=5,
        top_p=0.9,
        seed=3,
        stop_tokens=(0, 7),
        nonce="g",
    )
    raw = canonical_json(spec)
    assert parse_spec(raw) == spec and canonical_json(parse_spec(raw)) == raw


# The first version's bytes: a signed spec's hash names its job and is recorded on chain.
PINNED = (
    b'{"batch_size":0,"device":"any","kind":"generation","max_attempts":5,"max_new_tokens":64,"min_memor'
    b'y_bytes":0,"model":{"sha256":"abababababababababababababababababababababababababababababababab","siz'
    b'e":10},"nonce":"g","prompts":{"sha256":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd'
    b'cdcdcd","size":4096},"reward_per_task_wei":0,"seed":0,"shard_prompts":64,"stop_tokens":[],"task_mem'
    b'ory_limit_bytes":4294967296,"task_time_limit_s":600,"temperature":0.0,"top_k":0,"top_p":1.0,"verif'
    b'ication":null,"vocab_size":50}'
)


def test_bytes_are_pinned() -> None:
    raw = canonical_json(GenerationSpec(model=REF, prompts=PROMPTS, vocab_size=50, nonce="g"))
    assert raw == PINNED
    assert len(spec_hash(raw)) == 64


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer"),
        ({"max_new_tokens": 1.5}, "max_new_tokens must be an integer"),
        ({"max_new_tokens": 10**9}, "max_new_tokens must be an integer"),
        ({"vocab_size": 0}, "vocab_size must be an integer"),
        ({"temperature": -1}, "temperature must be a number"),
        ({"temperature": 1e-9}, "at least 0.001"),
        ({"temperature": float("inf")}, "temperature must be a finite number"),
        ({"top_p": 0}, "top_p must be a number"),
        ({"top_p": 1.5, "temperature": 1}, "top_p must be a number"),
        ({"top_k": 5}, "apply to sampling"),
        ({"top_k": 51, "temperature": 1}, "larger than the vocabulary"),
        ({"stop_tokens": [50]}, "stop_tokens"),
        ({"stop_tokens": ["a"]}, "stop_tokens must be a list of token ids"),
        ({"stop_tokens": list(range(65))}, "at most 64"),
        ({"seed": -1}, "seed must be an integer"),
        ({"shard_prompts": 0}, "shard_prompts must be an integer"),
        ({"prompts": None}, "prompts must be an object"),
        ({"beams": 4}, "unknown field"),
    ],
)
def test_bad_settings_are_refused_with_the_field_named(over: dict[str, object], message: str) -> None:
    raw = json.dumps(spec_dict(**over)).encode()
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)


def test_missing_vocab_size_is_named() -> None:
    d = spec_dict()
    del d["vocab_size"]
    with pytest.raises(SpecError, match="vocab_size"):
        parse_spec(json.dumps(d).encode())
