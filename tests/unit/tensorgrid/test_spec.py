"""Job specs: strict parsing, canonical hashing, stable ids."""

from __future__ import annotations

import json

import pytest

from tensorgrid.errors import SpecError
from tensorgrid.spec import InferenceSpec, NoopSpec, canonical_json, job_id_for, parse_spec, spec_hash
from tensorgrid.types import BlobRef

REF = BlobRef("ab" * 32, 10)


def spec_dict(**over: object) -> dict[str, object]:
    d = json.loads(canonical_json(InferenceSpec(model=REF, inputs=REF, nonce="n")))
    d.update(over)
    return d


def test_round_trip_is_canonical() -> None:
    spec = InferenceSpec(model=REF, inputs=REF, input_names=("x",), shard_rows=7, nonce="n")
    raw = canonical_json(spec)
    assert parse_spec(raw) == spec
    assert canonical_json(parse_spec(raw)) == raw
    assert spec_hash(raw) == spec_hash(canonical_json(spec))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"kind": "train"}).encode(), "kind must be one of"),
        (json.dumps(spec_dict(shard_rows=0)).encode(), "shard_rows must be an integer"),
        (json.dumps(spec_dict(shard_rows=True)).encode(), "shard_rows must be an integer"),
        (json.dumps(spec_dict(device="tpu")).encode(), "device must be one of"),
        (json.dumps(spec_dict(surprise=1)).encode(), "unknown field"),
        (json.dumps(spec_dict(model={"sha256": "zz", "size": 1})).encode(), "model.sha256"),
        (json.dumps(spec_dict(inputs={"sha256": "ab" * 32})).encode(), "exactly 'sha256' and 'size'"),
        (json.dumps(spec_dict(input_names=["a", "a"])).encode(), "duplicates"),
        (json.dumps({"kind": "inference"}).encode(), "incomplete"),
        (b" " * 70_000, "the limit is"),
    ],
)
def test_malformed_specs_are_refused_with_a_reason(raw: bytes, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)


def test_job_id_depends_on_submitter_and_spec() -> None:
    raw = canonical_json(NoopSpec(tasks=3, nonce="a"))
    a, b = "0x" + "11" * 20, "0x" + "22" * 20
    assert job_id_for(a, spec_hash(raw)) != job_id_for(b, spec_hash(raw))
    assert job_id_for(a, spec_hash(raw)) == job_id_for(a, spec_hash(raw))
    assert len(job_id_for(a, spec_hash(raw))) == 64
