from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tensorgrid.errors import InvalidTensorFile
from tensorgrid.spec import TrainingSpec
from tensorgrid.training.data import permutation, plan_split, round_shards, shard_rows, split_rows, write_rows
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.unit.training.conftest import REF


def test_split_is_deterministic_disjoint_and_complete() -> None:
    a, b = split_rows(1000, 200, seed=7), split_rows(1000, 200, seed=7)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.heldout, b.heldout)
    assert len(a.heldout) == 200 and len(a.train) == 800
    assert sorted(np.concatenate([a.train, a.heldout]).tolist()) == list(range(1000))
    assert not np.array_equal(split_rows(1000, 200, seed=8).heldout, a.heldout)


def test_permutation_is_pinned() -> None:
    # Shards must never move with a library upgrade: the permutation is our own hash.
    assert permutation(8, 0, "split").tolist() == permutation(8, 0, "split").tolist()
    assert sorted(permutation(1000, 3, "x").tolist()) == list(range(1000))
    assert permutation(10, 0, "split").tolist() == [4, 7, 2, 9, 1, 5, 3, 0, 6, 8]


def test_shards_are_disjoint_within_a_round_and_cover_an_epoch() -> None:
    spec = TrainingSpec(train_program=REF, dataset=REF, batch_size=5, inner_steps=4, workers_per_round=3, seed=1)
    split = plan_split(spec, 300)  # 240 train rows, 60 per round → 4 rounds per epoch
    seen: list[int] = []
    for r in range(4):
        shards = round_shards(spec, split, r)
        assert [len(s) for s in shards] == [20, 20, 20]
        rows = np.concatenate(shards)
        assert len(set(rows.tolist())) == 60
        assert set(rows.tolist()) <= set(split.train.tolist())
        seen += rows.tolist()
    assert sorted(seen) == sorted(split.train.tolist())  # one epoch: every row exactly once
    again = shard_rows(split.train, seed=1, round=2, worker=1, workers=3, shard_size=20)
    assert np.array_equal(again, round_shards(spec, split, 2)[1])
    assert not np.array_equal(round_shards(spec, split, 4)[0], round_shards(spec, split, 0)[0])


def test_shard_request_larger_than_split_is_refused() -> None:
    with pytest.raises(InvalidTensorFile, match="the training split has 10"):
        shard_rows(np.arange(10), seed=0, round=0, worker=0, workers=2, shard_size=6)


def test_write_rows_gathers_in_order(tmp_path: Path) -> None:
    features = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    labels = torch.arange(20, dtype=torch.int64)
    save_tensors({"features": features, "labels": labels}, tmp_path / "d.safetensors")
    rows = np.array([7, 3, 19, 0])
    assert write_rows(tmp_path / "d.safetensors", rows, tmp_path / "s.safetensors") == 4
    out = load_tensors(tmp_path / "s.safetensors")
    assert torch.equal(out["features"], features[rows]) and torch.equal(out["labels"], labels[rows])
    write_rows(tmp_path / "d.safetensors", rows, tmp_path / "s2.safetensors")
    assert (tmp_path / "s.safetensors").read_bytes() == (tmp_path / "s2.safetensors").read_bytes()
    with pytest.raises(InvalidTensorFile, match="within 0..19"):
        write_rows(tmp_path / "d.safetensors", np.array([20]), tmp_path / "bad.safetensors")
