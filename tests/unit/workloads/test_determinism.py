"""The determinism contract's probe: row-independent programs pass, the rest are named."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from tensorgrid.workloads.determinism import MAX_BATCH, PROBE_BUDGET, SAMPLES, budget_batch, probe
from tensorgrid.workloads.tolerance import CUDA_FACTOR, device_class, tolerance

torch.manual_seed(0)
LINEAR = torch.nn.Linear(16, 8).eval()
X = torch.randn(64, 16)


def fwd(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Sequence[torch.Tensor]], object]:
    return lambda batch: fn(batch[0])


def test_row_independent_programs_pass() -> None:
    for fn in (LINEAR, lambda x: torch.nn.functional.gelu(LINEAR(x)), lambda x: LINEAR(x).softmax(-1)):
        verdict = probe(fwd(fn), [X], batch_size=32)
        assert verdict.independent and verdict.finished and verdict.rows == 32, verdict.reason


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (lambda x: LINEAR(x) - LINEAR(x).mean(0), "batch"),  # centring over the batch
        (lambda x: torch.nn.functional.batch_norm(LINEAR(x), None, None, training=True), "batch"),
        (lambda x: LINEAR(x) + torch.rand_like(LINEAR(x)), "two runs"),  # randomness
        (lambda x: torch.nn.functional.dropout(LINEAR(x), 0.5, training=True), "two runs"),
        (lambda x: LINEAR(x).cumsum(0), "reversed"),  # depends on the rows before it
    ],
)
def test_row_dependent_or_random_programs_are_named(fn: Callable[[torch.Tensor], torch.Tensor], words: str) -> None:
    verdict = probe(fwd(fn), [X], batch_size=0)
    assert not verdict.independent
    assert words in verdict.reason and "only on its own input row" in verdict.reason


def test_dependent_only_above_a_batch_size_is_seen_at_the_jobs_batch_size() -> None:
    def big_batches(x: torch.Tensor) -> torch.Tensor:
        y = LINEAR(x)
        return y - y.mean(0) if x.shape[0] > 16 else y

    assert probe(fwd(big_batches), [X], batch_size=8).independent  # what nodes will run: fine
    assert not probe(fwd(big_batches), [X], batch_size=32).independent


def test_probe_is_bounded() -> None:
    calls: list[int] = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return LINEAR(x)

    verdict = probe(fwd(counting), [torch.randn(10_000, 16)], batch_size=0, max_batch=128, samples=3)
    assert verdict.independent and max(calls) == 128 and len(calls) <= 3 + 4
    slow = probe(fwd(counting), [X], deadline_s=0.0)
    assert slow.independent and not slow.finished  # out of time: says so, claims nothing


def test_cuda_tolerance_is_applied_when_either_side_ran_on_cuda() -> None:
    assert device_class("cpu", "cpu") == "cpu" and device_class("cpu", "cuda") == "cuda"
    atol, rtol = tolerance(torch.float32, "cuda")
    assert (atol, rtol) == pytest.approx((1e-4 * CUDA_FACTOR, 1e-3 * CUDA_FACTOR))


def test_the_probe_batch_follows_the_job_size() -> None:
    assert budget_batch(448) == 2  # a few hundred rows of a large model: the smallest probe
    assert budget_batch(10**7) == MAX_BATCH
    for rows in (5_000, 20_000):
        batch = budget_batch(rows)
        assert 2 < batch < MAX_BATCH and 3 * batch + 2 * SAMPLES <= rows * PROBE_BUDGET
