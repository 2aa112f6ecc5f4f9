"""The verification policy's arithmetic, the row comparison and the spec's policy field."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from coordinator.services.verification.compare import load_rows, rows_match
from coordinator.services.verification.policy import VerificationPolicy, escape_probability, required_stake
from tensorgrid.errors import SpecError
from tensorgrid.spec import InferenceSpec, VerificationSpec, canonical_json, parse_spec
from tensorgrid.spec.verification import CHECK_BUDGET, CHECK_RUNS, budget_rows, detection_rows
from tensorgrid.types import BlobRef
from tensorgrid.workloads.arrays import from_torch, to_torch
from tensorgrid.workloads.tensorfile import gather_rows, load_tensors, save_tensors

REF = BlobRef("ab" * 32, 1)


def test_default_policy_reaches_its_target_per_job() -> None:
    policy = VerificationPolicy(VerificationSpec(), tasks=48, shard_rows=512)
    m = policy.sample_rows(1.0, 512)
    assert m == 10  # 1 - 0.99^(10*48) >= 0.99, and 9 rows would not do
    assert policy.detection(1.0) >= 0.99
    assert 1 - escape_probability(0.01, 9) ** 48 < 0.99


def test_checks_stay_within_the_compute_budget_on_a_small_job() -> None:
    # A real model's job of a few hundred rows: the detection target would re-run 115 of each
    # 112-row shard's rows (and the referee as many again); the budget caps a check at
    # CHECK_BUDGET / CHECK_RUNS of its shard, so checker and referee together spend <= 5%.
    policy = VerificationPolicy(VerificationSpec(), tasks=4, shard_rows=112)
    m = policy.sample_rows(1.0, 112)
    assert m == budget_rows(112) == 2
    assert CHECK_RUNS * m / 112 <= CHECK_BUDGET
    # what that buys is what the job reports; its nodes need the stake that makes cheating a loss
    assert policy.detection(1.0) < 0.99
    reward = 10**15
    priced = VerificationPolicy(VerificationSpec(), tasks=4, shard_rows=112, reward_per_task_wei=reward)
    assert Fraction(priced.worst_detection) * priced.required_stake_wei > 4 * reward


def test_budget_leaves_large_jobs_at_their_target_and_never_goes_under_one_row() -> None:
    assert detection_rows(VerificationSpec(), 48, 512) == 10  # the target's rows fit the budget (12)
    assert detection_rows(VerificationSpec(), 16, 16) == 1  # a shard under 40 rows still gets one
    assert detection_rows(VerificationSpec(spot_rows=30), 4, 112) == 30  # an explicit sample wins
    assert VerificationPolicy(VerificationSpec(mode="replicate"), 4, 112).sample_rows(1.0, 112) == 112


def test_adaptive_rate_and_floor() -> None:
    policy = VerificationPolicy(VerificationSpec(trust_after=10, check_floor=0.1), tasks=10, shard_rows=100)
    assert policy.check_rate(0) == policy.check_rate(9) == 1.0
    assert policy.check_rate(10) == pytest.approx(0.1)
    assert policy.check_rate(1000) == pytest.approx(0.1)
    assert VerificationPolicy(VerificationSpec(check_floor=0.01), 10, 100).check_rate(20) == pytest.approx(0.05)
    assert VerificationPolicy(VerificationSpec(mode="replicate"), 10, 100).sample_rows(1.0, 100) == 100
    assert not VerificationPolicy(VerificationSpec(mode="none"), 10, 100).enabled


def test_required_stake_makes_cheating_a_loss() -> None:
    for p, reward in ((0.5, 10**18), (0.99, 7), (1.0, 1)):
        stake = required_stake(p, reward)
        assert Fraction(p) * stake > reward and Fraction(p) * (stake - 1) <= reward
    assert required_stake(0.3, 0) == 0
    policy = VerificationPolicy(VerificationSpec(), tasks=6, shard_rows=500, reward_per_task_wei=10**15)
    assert Fraction(policy.worst_detection) * policy.required_stake_wei > 6 * 10**15


def test_spec_field_is_optional_and_strict() -> None:
    old = InferenceSpec(model=REF, inputs=REF, nonce="n")
    assert "verification" not in json.loads(canonical_json(old))  # old specs keep their bytes
    assert parse_spec(canonical_json(old)) == old
    new = InferenceSpec(model=REF, inputs=REF, nonce="n", verification=VerificationSpec(spot_rows=5))
    assert parse_spec(canonical_json(new)) == new
    for bad in ({"mode": "vibes"}, {"check_floor": 2}, {"spot_rows": -1}, {"extra": 1}, {"target_detection": True}):
        raw = json.loads(canonical_json(new))
        raw["verification"] = {**raw["verification"], **bad}
        with pytest.raises(SpecError, match="verification"):
            parse_spec(json.dumps(raw).encode())


def test_compare_within_tolerance_only() -> None:
    x = torch.randn(20, 10)
    a = {"output": from_torch(x)}
    assert rows_match(a, {"output": from_torch(x + 1e-6)})
    b = x.clone()
    b[3, 4] += 0.01
    assert not rows_match(a, {"output": from_torch(b)})
    assert not rows_match(a, {"other": a["output"]})
    assert not rows_match(a, {"output": from_torch(x.double())})
    ints = {"output": from_torch(torch.arange(5))}
    assert rows_match(ints, {"output": from_torch(torch.arange(5))})
    assert not rows_match(ints, {"output": from_torch(torch.arange(5) + 1)})


def test_gather_rows_and_load_rows(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.safetensors", tmp_path / "dst.safetensors"
    x, y = torch.randn(50, 3), torch.arange(50, dtype=torch.int64)
    save_tensors({"x": x, "y": y}, src)
    gather_rows(src, [4, 0, 49], dst)
    got = load_tensors(dst)
    assert torch.equal(got["x"], x[[4, 0, 49]]) and torch.equal(got["y"], y[[4, 0, 49]])
    rows = load_rows(src, [4, 0, 49])
    assert torch.equal(to_torch(rows["x"]), got["x"]) and torch.equal(to_torch(rows["y"]), got["y"])
    assert load_rows(src, [99]) == {} and load_rows(src, [-1]) == {}
