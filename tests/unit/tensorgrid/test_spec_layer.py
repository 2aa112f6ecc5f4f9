"""The spec layer: one strict decoder for every kind, the registry, the common checks."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, cast

import pytest

from tensorgrid.errors import SpecError
from tensorgrid.spec import (
    KINDS,
    EndpointSpec,
    GenerationSpec,
    InferenceSpec,
    JobSpecBase,
    NoopSpec,
    TrainingSpec,
    VerificationSpec,
    canonical_json,
    parse_spec,
    validate,
)
from tensorgrid.types import BlobRef

REF = BlobRef("ab" * 32, 10)
EXAMPLES: dict[str, JobSpecBase] = {
    "noop": NoopSpec(tasks=2, nonce="x"),
    "inference": InferenceSpec(model=REF, inputs=REF, nonce="x", verification=VerificationSpec()),
    "training": TrainingSpec(train_program=REF, dataset=REF, nonce="x", verification=VerificationSpec()),
    "generation": GenerationSpec(model=REF, prompts=REF, vocab_size=8, nonce="x", verification=VerificationSpec()),
    "endpoint": EndpointSpec(model=REF, nonce="x"),
}


def as_dict(kind: str) -> dict[str, Any]:
    return json.loads(canonical_json(EXAMPLES[kind]))  # type: ignore[no-any-return]


def test_every_registered_kind_has_an_example() -> None:
    assert set(KINDS) == set(EXAMPLES) == {"noop", "inference", "training", "generation", "endpoint"}
    for name, cls in KINDS.items():
        assert cls.kind_name() == name and isinstance(EXAMPLES[name], cls)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_unknown_top_level_fields_are_refused_for_every_kind(kind: str) -> None:
    data = as_dict(kind) | {"surprise": 1, "another": 2}
    with pytest.raises(SpecError, match=f"unknown field\\(s\\) in {kind} spec: another, surprise"):
        parse_spec(json.dumps(data).encode())
    with pytest.raises(SpecError, match="unknown field"):
        KINDS[kind].from_dict(data)


@pytest.mark.parametrize("kind", ["inference", "training"])
def test_unknown_verification_fields_are_refused(kind: str) -> None:
    data = as_dict(kind)
    data["verification"]["sometimes"] = True
    with pytest.raises(SpecError, match=r"unknown field\(s\) in verification: sometimes"):
        parse_spec(json.dumps(data).encode())


@pytest.mark.parametrize("name", ["inner_optimizer", "outer_optimizer"])
def test_unknown_optimizer_fields_are_refused(name: str) -> None:
    data = as_dict("training")
    data[name]["nesterov"] = 1
    with pytest.raises(SpecError, match=f"unknown field\\(s\\) in {name}: nesterov"):
        parse_spec(json.dumps(data).encode())


def test_noop_has_no_verification_field() -> None:
    data = as_dict("noop") | {"verification": None}
    with pytest.raises(SpecError, match="unknown field"):
        parse_spec(json.dumps(data).encode())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_kind_decodes_only_its_own_kind(kind: str) -> None:
    for other in set(KINDS) - {kind}:
        with pytest.raises(SpecError, match=f"needs kind '{kind}'"):
            KINDS[kind].from_dict(as_dict(other))
    assert KINDS[kind].parse(canonical_json(EXAMPLES[kind])) == EXAMPLES[kind]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device", "tpu", "device must be one of"),
        ("nonce", "n" * 65, "nonce must be a string"),
        ("max_attempts", 0, r"max_attempts must be an integer in \[1, 100\]"),
        ("task_memory_limit_bytes", 1, "task_memory_limit_bytes"),
        ("reward_per_task_wei", -1, "reward_per_task_wei"),
        ("kind", "other", "kind must be"),
    ],
)
def test_common_fields_are_checked_once_for_every_kind(kind: str, field: str, value: object, message: str) -> None:
    spec = dataclasses.replace(EXAMPLES[kind], **cast(dict[str, Any], {field: value}))
    with pytest.raises(SpecError, match=message):
        validate(spec)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_wei_may_travel_as_a_decimal_string(kind: str) -> None:
    """JavaScript cannot write 2^53 + 1 as a JSON number: it may send the digits as a string. The
    spec is the same; its canonical bytes (what the SDK signs) keep the number, so no hash moves."""
    big = 2**200 + 1
    number = dataclasses.replace(EXAMPLES[kind], reward_per_task_wei=big)
    if kind == "endpoint":
        number = dataclasses.replace(number, max_requests=5)
    data = json.loads(canonical_json(number))
    data["reward_per_task_wei"] = str(big)
    spec = KINDS[kind].from_dict(data)
    assert spec == number and spec.reward_per_task_wei == big
    assert canonical_json(spec) == canonical_json(number) and b'"reward_per_task_wei":%d' % big in canonical_json(spec)
    for bad in ("-1", "01", "1e18", "0x10", " 1", "1.0", "", "9" * 79):
        data["reward_per_task_wei"] = bad
        with pytest.raises(SpecError, match="reward_per_task_wei must be"):
            KINDS[kind].from_dict(data)


def test_kinds_keep_their_own_defaults() -> None:
    assert NoopSpec(tasks=1).task_time_limit_s == 60 and NoopSpec(tasks=1).task_memory_limit_bytes == 1 << 30
    assert InferenceSpec(model=REF, inputs=REF).task_time_limit_s == 600
    assert TrainingSpec(train_program=REF, dataset=REF).task_memory_limit_bytes == 4 << 30
    assert NoopSpec(tasks=1).nonce != NoopSpec(tasks=1).nonce  # a fresh nonce each


def test_inference_verification_must_be_an_object_training_may_be_null() -> None:
    inference = as_dict("inference") | {"verification": None}
    with pytest.raises(SpecError, match="verification must be an object"):
        parse_spec(json.dumps(inference).encode())
    training = as_dict("training") | {"verification": None}
    assert parse_spec(json.dumps(training).encode()) == TrainingSpec(train_program=REF, dataset=REF, nonce="x")
