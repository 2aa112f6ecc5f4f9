from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tensorgrid.errors import InvalidTensorFile
from tensorgrid.spec import NesterovSGD
from tensorgrid.training.commitments import chain
from tensorgrid.training.compression import PseudoGradient, write_result
from tensorgrid.training.data import write_rows
from tensorgrid.training.outer import (
    apply_round,
    average,
    check_pseudo_gradient,
    evaluate,
    initial_weights,
    outer_step,
    parameter_names,
)
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors
from tests.unit.training.conftest import Digits

WEIGHTS = {"p": torch.tensor([1.0, 2.0]), "buf": torch.tensor([10.0]), "n": torch.tensor(3)}
OPT = NesterovSGD(lr=0.5, momentum=0.9)


def _result(p: list[float], buf: float, rows: int) -> PseudoGradient:
    tensors = {"p": torch.tensor(p), "buf": torch.tensor([buf])}
    digests = ["aa" * 64, "bb" * 64]
    links = chain(bytes.fromhex(d) for d in digests)
    return PseudoGradient(tensors, rows, 1, [0.5], [0, 1], links, checkpoint_digests=digests)


RESULTS = [_result([0.2, -0.4], 1.0, 30), _result([0.6, 0.0], 3.0, 10)]


def test_outer_step_by_hand() -> None:
    g = average(RESULTS)  # rows-weighted: (0.2·30 + 0.6·10)/40 = 0.3, (−0.4·30)/40 = −0.3
    assert torch.allclose(g["p"], torch.tensor([0.3, -0.3])) and torch.allclose(g["buf"], torch.tensor([1.5]))
    w1, m1 = outer_step(WEIGHTS, g, None, OPT, {"p"})
    # m = g; θ −= lr·(g + μ·m) = 0.5 · 1.9 · g
    assert torch.allclose(w1["p"], torch.tensor([0.715, 2.285]))
    assert torch.allclose(m1["p"], torch.tensor([0.3, -0.3])) and set(m1) == {"p"}
    assert torch.allclose(w1["buf"], torch.tensor([8.5]))  # buffers average: 10 − 1.5
    assert torch.equal(w1["n"], torch.tensor(3))  # integer entries keep the global value
    w2, m2 = outer_step(w1, g, m1, OPT, {"p"})
    # m = 0.9·0.3 + 0.3 = 0.57; θ = 0.715 − 0.5·(0.3 + 0.9·0.57) = 0.3085
    assert torch.allclose(m2["p"], torch.tensor([0.57, -0.57]))
    assert torch.allclose(w2["p"], torch.tensor([0.3085, 2.6915]))


def test_matches_torch_nesterov_sgd() -> None:
    theta = torch.nn.Parameter(WEIGHTS["p"].clone())
    sgd = torch.optim.SGD([theta], lr=OPT.lr, momentum=OPT.momentum, nesterov=True)
    ours, momentum = dict(WEIGHTS), None
    for g in ([0.3, -0.3], [0.1, 0.2], [-0.5, 0.05]):
        theta.grad = torch.tensor(g)
        sgd.step()
        ours, momentum = outer_step(ours, {"p": torch.tensor(g), "buf": torch.zeros(1)}, momentum, OPT, {"p"})
        assert torch.allclose(ours["p"], theta.detach())


def test_apply_round_persists_momentum_and_resumes(tmp_path: Path) -> None:
    save_tensors(WEIGHTS, tmp_path / "w0.safetensors")
    paths = []
    for i, r in enumerate(RESULTS):
        paths.append(tmp_path / f"r{i}.safetensors")
        write_result(r, paths[-1], "none")
    for rnd in range(2):  # each round is a fresh call, as after a coordinator restart
        outcome = apply_round(
            tmp_path / f"w{rnd}.safetensors", tmp_path / f"m{rnd}.safetensors", paths, OPT, {"p"},
            tmp_path / f"w{rnd + 1}.safetensors", tmp_path / f"m{rnd + 1}.safetensors",
        )  # fmt: skip
        assert (outcome.workers, outcome.rows) == (2, 40)
    assert torch.allclose(load_tensors(tmp_path / "w2.safetensors")["p"], torch.tensor([0.3085, 2.6915]))
    assert not list(tmp_path.glob("*.tmp"))


def test_a_plain_round_averages_and_starts_no_momentum(tmp_path: Path) -> None:
    save_tensors(WEIGHTS, tmp_path / "w0.safetensors")
    paths = []
    for i, r in enumerate(RESULTS):
        paths.append(tmp_path / f"r{i}.safetensors")
        write_result(r, paths[-1], "none")
    for rnd, plain in enumerate((True, False)):
        apply_round(
            tmp_path / f"w{rnd}.safetensors", tmp_path / f"m{rnd}.safetensors", paths, OPT, {"p"},
            tmp_path / f"w{rnd + 1}.safetensors", tmp_path / f"m{rnd + 1}.safetensors", plain=plain,
        )  # fmt: skip
        if plain:  # θ − g, whatever the optimizer: 1 − 0.3, 2 + 0.3; the momentum stays zero
            assert torch.allclose(load_tensors(tmp_path / "w1.safetensors")["p"], torch.tensor([0.7, 2.3]))
            assert torch.equal(load_tensors(tmp_path / "m1.safetensors")["p"], torch.zeros(2))
    # then the optimizer's first step, as from round 0: θ −= 0.5 · 1.9 · g
    assert torch.allclose(load_tensors(tmp_path / "w2.safetensors")["p"], torch.tensor([0.415, 2.585]))
    assert torch.allclose(load_tensors(tmp_path / "m2.safetensors")["p"], torch.tensor([0.3, -0.3]))


def test_mismatched_pseudo_gradient_is_rejected() -> None:
    bad = PseudoGradient({"p": torch.zeros(3), "buf": torch.zeros(1)}, 1, 1, [0.0], [0, 1], ["a", "b"])
    with pytest.raises(InvalidTensorFile, match="shape"):
        check_pseudo_gradient(bad, WEIGHTS)
    extra = PseudoGradient({"p": torch.zeros(2)}, 1, 1, [0.0], [0, 1], ["a", "b"])
    with pytest.raises(InvalidTensorFile, match="missing"):
        check_pseudo_gradient(extra, WEIGHTS)


def test_evaluate(digits: Digits, tmp_path: Path) -> None:
    write_rows(digits.dataset, np.arange(0, 300), tmp_path / "held.safetensors")
    initial_weights(digits.train_program, tmp_path / "w.safetensors")
    assert parameter_names(digits.train_program) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    a = evaluate(digits.eval_program, tmp_path / "w.safetensors", tmp_path / "held.safetensors", "cross_entropy")
    accuracy, loss = a["accuracy"], a["loss"]
    assert accuracy is not None and loss is not None and accuracy < 0.3 and loss > 2.0  # untrained
    b = evaluate(digits.train_program, tmp_path / "w.safetensors", tmp_path / "held.safetensors", "cross_entropy")
    assert b == evaluate(digits.train_program, tmp_path / "w.safetensors", tmp_path / "held.safetensors",
                         "cross_entropy", batch_size=1024)  # fmt: skip
