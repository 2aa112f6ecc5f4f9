"""The endpoint spec: what a submitter may ask of a real-time endpoint, checked before anything runs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tensorgrid.errors import SpecError
from tensorgrid.rpc import MAX_MESSAGE_BYTES
from tensorgrid.spec import EndpointSpec, canonical_json, parse_spec
from tensorgrid.spec.endpoint import MAX_REQUEST_BYTES
from tensorgrid.types import BlobRef

REF = {"sha256": "ab" * 32, "size": 10}


def spec(**fields: Any) -> EndpointSpec:
    return parse_spec(json.dumps({"kind": "endpoint", "model": REF, **fields}).encode())  # type: ignore[return-value]


def test_defaults_serve_inference_on_one_replica_with_sampled_checks() -> None:
    s = spec()
    assert (s.serves, s.min_replicas, s.max_replicas) == ("inference", 1, 1)
    assert 0 < s.check_rate < 1 and s.max_delay_us == 0  # no waiting for company by default
    assert s.replica_settings() == {"input_names": []}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"serves": "training"}, "serves must be one of"),
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas .3. is above max_replicas"),
        ({"max_replicas": 65}, "max_replicas must be an integer"),
        ({"check_rate": 1.5}, "check_rate must be a number"),
        ({"check_rate": "often"}, "check_rate must be a finite number"),
        ({"max_request_bytes": MAX_REQUEST_BYTES + 1}, "max_request_bytes must be an integer"),
        ({"reward_per_task_wei": 5}, "a paid endpoint needs max_requests"),
        ({"serves": "generation"}, "needs vocab_size"),
        ({"vocab_size": 8}, "apply to serves 'generation'"),
        ({"serves": "generation", "vocab_size": 8, "top_k": 3}, "top_k and top_p apply to sampling"),
        ({"serves": "generation", "vocab_size": 8, "stop_tokens": [9]}, r"stop_tokens\[\] must be an integer"),
        ({"input_names": ["x", "x"]}, "input_names has duplicates"),
        ({"replicas": 2}, r"unknown field\(s\) in endpoint spec: replicas"),
    ],
)
def test_bad_settings_are_refused_with_the_field_named(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec(**fields)


def test_a_request_always_fits_one_grpc_message() -> None:
    assert MAX_REQUEST_BYTES + 64 * 1024 <= MAX_MESSAGE_BYTES


def test_a_generation_endpoint_tells_replicas_its_decoding_settings() -> None:
    s = spec(serves="generation", vocab_size=32, max_new_tokens=5, temperature=0.7, top_k=4, stop_tokens=[2])
    settings = s.replica_settings()["generation"]
    assert settings["vocab_size"] == 32 and settings["max_new_tokens"] == 5 and settings["stop_tokens"] == [2]
    assert s.decode_settings(seed=9)["seed"] == 9


def test_a_paid_endpoint_escrows_price_times_max_requests() -> None:
    s = spec(reward_per_task_wei=10**15, max_requests=1000)
    assert s.reward_per_task_wei * s.max_requests == 10**18
    assert canonical_json(s) == canonical_json(EndpointSpec(**{**s.__dict__, "model": BlobRef("ab" * 32, 10)}))
