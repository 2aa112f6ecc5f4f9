from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tensorgrid.errors import SpecError
from tensorgrid.spec import (
    AdamW,
    NesterovSGD,
    TrainingSpec,
    VerificationSpec,
    canonical_json,
    spec_to_dict,
    validate_training,
)
from tensorgrid.workloads.tensorfile import Header, read_header, save_tensors
from tests.unit.training.conftest import REF

BLOB = {"sha256": "ab" * 32, "size": 1}


def _raw(**changes: object) -> bytes:
    data: dict[str, object] = {"kind": "training", "train_program": BLOB, "dataset": BLOB, "nonce": "n1"}
    data.update(changes)
    return json.dumps(data).encode()


def _header(tmp_path: Path, **tensors: torch.Tensor) -> Header:
    save_tensors(tensors, tmp_path / "d.safetensors")
    return read_header(tmp_path / "d.safetensors")


def test_round_trip_is_canonical() -> None:
    spec = TrainingSpec.parse(_raw(inner_optimizer={"name": "adamw", "lr": 1, "betas": [0.9, 0.95]}, quorum=1))
    assert spec.inner_optimizer == AdamW(lr=1.0, betas=(0.9, 0.95))
    assert spec.outer_optimizer == NesterovSGD(lr=0.7, momentum=0.8)
    raw = canonical_json(spec)
    again = TrainingSpec.parse(raw)
    assert again == spec and canonical_json(again) == raw
    assert json.loads(raw) == spec_to_dict(spec)
    assert b'"lr":1.0' in raw  # ints are normalized, so 1 and 1.0 hash alike


def test_optional_blobs_may_be_null() -> None:
    spec = TrainingSpec.parse(_raw(eval_program=None, initial_weights=BLOB))
    assert spec.eval_program is None and spec.initial_weights == REF


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bogus": 1}, "unknown field"),
        ({"kind": "inference"}, "kind 'training'"),
        ({"quorum": 0}, r"quorum must be a number in \(0.0, 1.0\]"),
        ({"quorum": 1.5}, "quorum"),
        ({"eval_fraction": 0.5}, "eval_fraction"),
        ({"loss": "hinge"}, "loss must be one of"),
        ({"compression": "int4"}, "compression must be one of"),
        ({"checkpoint_every": 0}, r"checkpoint_every must be an integer in \[1, 1000000\]"),
        ({"rounds": 0}, "rounds"),
        ({"batch_size": True}, "batch_size"),
        ({"inner_optimizer": {"name": "sgd"}}, "must be 'adamw'"),
        ({"inner_optimizer": {"betas": [0.9]}}, "two numbers"),
        ({"inner_optimizer": {"lr": 0}}, "inner_optimizer.lr"),
        ({"inner_optimizer": {"lr": 1e-3, "momentum": 0.9}}, "unknown field.*momentum"),
        ({"outer_optimizer": {"name": "adam"}}, "must be 'nesterov'"),
        ({"outer_optimizer": {"momentum": 1.0}}, "outer_optimizer.momentum"),
        ({"eval_fraction": 0, "eval_program": BLOB}, "no held-out data"),
        ({"task_time_limit_s": 1000, "round_deadline_s": 900}, "could never finish"),
        ({"dataset": {"sha256": "zz", "size": 1}}, "dataset.sha256"),
        ({"device": "tpu"}, "device"),
        ({"inner_warmup_steps": -1}, r"inner_warmup_steps must be an integer in \[0, 1000000\]"),
        ({"inner_warmup_steps": 2.5}, "inner_warmup_steps"),
        ({"inner_final_lr": -0.001}, r"inner_final_lr must be a number in \[0.0, 0.01\]"),
        ({"inner_final_lr": 0.02}, r"inner_final_lr must be a number in \[0.0, 0.01\]"),
        ({"inner_final_lr": "low"}, "inner_final_lr"),
    ],
)
def test_invalid_specs_say_why(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        TrainingSpec.parse(_raw(**changes))


def test_quorum_workers() -> None:
    spec = TrainingSpec(train_program=REF, dataset=REF, workers_per_round=4, quorum=0.75)
    assert spec.quorum_workers == 3
    assert TrainingSpec(train_program=REF, dataset=REF, workers_per_round=3, quorum=0.01).quorum_workers == 1


def test_too_few_rows_reports_the_numbers(tmp_path: Path) -> None:
    header = _header(tmp_path, features=torch.zeros(100, 3), labels=torch.zeros(100, dtype=torch.int64))
    fits = TrainingSpec(
        train_program=REF, dataset=REF, batch_size=8, inner_steps=5, workers_per_round=2, eval_fraction=0.2
    )
    validate_training(fits, header)  # 80 rows per round, 100 - 20 held out = 80 to train on
    too_big = TrainingSpec(train_program=REF, dataset=REF, batch_size=9, inner_steps=5, workers_per_round=2)
    with pytest.raises(SpecError, match=r"9 × 5 × 2 = 90 distinct rows.*only 80 \(100 rows minus 20 held out\)"):
        validate_training(too_big, header)


@pytest.mark.parametrize(
    ("loss", "tensors", "message"),
    [
        ("cross_entropy", {"features": torch.zeros(50, 2), "labels": torch.zeros(50)}, "integer class indices"),
        ("mse", {"features": torch.zeros(50, 2), "labels": torch.zeros(50, 2, dtype=torch.int64)}, "for class"),
        ("mse", {"tokens": torch.zeros(50, 4, dtype=torch.int64)}, "must be cross_entropy"),
        ("cross_entropy", {"tokens": torch.zeros(50, 4)}, "2-D integer"),
        ("cross_entropy", {"features": torch.zeros(50, 2), "labels": torch.zeros(49, dtype=torch.int64)}, "same"),
        ("cross_entropy", {"inputs": torch.zeros(50, 2)}, "exactly 'features' and 'labels'"),
    ],
)
def test_dataset_must_fit_the_loss(tmp_path: Path, loss: str, tensors: dict[str, torch.Tensor], message: str) -> None:
    spec = TrainingSpec(train_program=REF, dataset=REF, loss=loss, batch_size=1, inner_steps=1)
    with pytest.raises(SpecError, match=message):
        validate_training(spec, _header(tmp_path, **tensors))


def test_mse_accepts_float_or_one_integer_target_per_row(tmp_path: Path) -> None:
    spec = TrainingSpec(train_program=REF, dataset=REF, loss="mse", batch_size=4, inner_steps=2)
    validate_training(spec, _header(tmp_path, features=torch.zeros(50, 2), labels=torch.zeros(50, 3)))
    ints = torch.zeros(50, dtype=torch.int32)
    validate_training(spec, _header(tmp_path, features=torch.zeros(50, 2), labels=ints))


def test_verification_policy_round_trips_and_leaves_old_hashes_alone() -> None:
    plain = TrainingSpec(train_program=REF, dataset=REF, nonce="x")
    assert b"verification" not in canonical_json(plain)
    checked = TrainingSpec(train_program=REF, dataset=REF, nonce="x", verification=VerificationSpec(check_floor=0.2))
    assert TrainingSpec.parse(canonical_json(checked)) == checked
    raw = canonical_json(checked).replace(b'"mode":"spotcheck"', b'"mode":"sometimes"')
    with pytest.raises(SpecError, match="verification.mode"):
        TrainingSpec.parse(raw)


def test_a_warm_up_is_signed_only_when_set() -> None:
    plain = TrainingSpec(train_program=REF, dataset=REF, nonce="x")
    assert b"warmup" not in canonical_json(plain)  # older specs keep their bytes and hashes
    warm = TrainingSpec(train_program=REF, dataset=REF, nonce="x", inner_warmup_steps=10)
    assert TrainingSpec.parse(canonical_json(warm)) == warm


def test_a_decay_is_signed_only_when_set() -> None:
    plain = TrainingSpec(train_program=REF, dataset=REF, nonce="x")
    assert b"final_lr" not in canonical_json(plain)  # older specs keep their bytes and hashes
    decayed = TrainingSpec(train_program=REF, dataset=REF, nonce="x", inner_final_lr=0.001)
    assert TrainingSpec.parse(canonical_json(decayed)) == decayed
    assert TrainingSpec.parse(canonical_json(decayed).replace(b"0.001", b"0")).inner_final_lr == 0.0


def test_plain_outer_rounds_are_signed_only_when_set() -> None:
    plain = TrainingSpec(train_program=REF, dataset=REF, nonce="x")
    assert b"outer_plain_rounds" not in canonical_json(plain)  # older specs keep their bytes and hashes
    assert not plain.plain_round(0)
    later = TrainingSpec(train_program=REF, dataset=REF, nonce="x", outer_plain_rounds=8)
    assert TrainingSpec.parse(canonical_json(later)) == later
    assert later.plain_round(7) and not later.plain_round(8)
    with pytest.raises(SpecError, match="outer_plain_rounds"):
        TrainingSpec.parse(canonical_json(later).replace(b'"outer_plain_rounds":8', b'"outer_plain_rounds":-1'))
