from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tensorgrid.spec import AdamW, TrainingSpec
from tensorgrid.training.baseline import run_baseline
from tensorgrid.training.outer import initial_weights
from tensorgrid.training.schedule import cosine_lr, scheduled_lr
from tests.unit.training.conftest import REF, Digits


def test_the_cosine_runs_from_lr_to_the_final_lr_and_stays_there() -> None:
    assert cosine_lr(0.01, 0.001, 0, 100) == 0.01
    assert cosine_lr(0.01, 0.001, 50, 100) == pytest.approx(0.0055)
    assert cosine_lr(0.01, 0.001, 100, 100) == pytest.approx(0.001)
    assert cosine_lr(0.01, 0.001, 150, 100) == pytest.approx(0.001)
    rates = [cosine_lr(0.01, 0.0, t, 100) for t in range(101)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False)) and rates[-1] == pytest.approx(0.0)


def test_a_warm_up_multiplies_the_cosine_by_the_task_step() -> None:
    assert scheduled_lr(0.01, 0) == 0.01  # no warm-up, no decay: a constant lr
    assert scheduled_lr(0.01, 0, warmup_steps=4) == pytest.approx(0.0025)
    assert scheduled_lr(0.01, 9, warmup_steps=4) == 0.01
    # step 0 of a task that starts halfway through the job: a quarter of the cosine's 0.0055
    assert scheduled_lr(0.01, 0, warmup_steps=4, final_lr=0.001, position=50, total=100) == pytest.approx(0.001375)


def test_the_baseline_decays_over_all_its_steps(digits: Digits, tmp_path: Path) -> None:
    spec = TrainingSpec(
        train_program=REF, dataset=REF, rounds=2, inner_steps=5, workers_per_round=2, inner_optimizer=AdamW(lr=1e-2)
    )
    initial_weights(digits.train_program, tmp_path / "w0.safetensors")

    def train(**changes: float) -> dict[str, torch.Tensor]:
        run = replace(spec, **changes)
        return run_baseline(digits.train_program, tmp_path / "w0.safetensors", digits.dataset, run).weights

    constant = train()
    assert all(torch.equal(constant[n], t) for n, t in train(inner_final_lr=1e-2).items())  # a flat "decay"
    decayed = train(inner_final_lr=0.0)
    assert not torch.equal(decayed["0.weight"], constant["0.weight"])
    # the first step is at the full lr either way: only later steps differ
    one = replace(spec, rounds=1, inner_steps=1)
    first = run_baseline(digits.train_program, tmp_path / "w0.safetensors", digits.dataset, one).weights
    first_decayed = run_baseline(
        digits.train_program, tmp_path / "w0.safetensors", digits.dataset, replace(one, inner_final_lr=0.0)
    ).weights
    assert torch.equal(first["0.weight"], first_decayed["0.weight"])
