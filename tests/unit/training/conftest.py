"""Shared training fixtures: scikit-learn's digits as a dataset, an MLP exported twice."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tensorgrid.types import BlobRef
from tensorgrid.workloads.model import export_program
from tests.datasets import save_digits

REF = BlobRef("ab" * 32, 1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny models on a 2-core box: intra-op threads cost far more than they save.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@dataclass(frozen=True)
class Digits:
    dataset: Path
    train_program: Path
    eval_program: Path
    rows: int


def digits_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(128, 10)
    )


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    root = tmp_path_factory.mktemp("digits")
    rows = save_digits(root / "digits.safetensors")
    module = digits_mlp()
    example = (torch.randn(4, 64),)
    export_program(module.train(), example, root / "train.pt2")
    export_program(module.eval(), example, root / "eval.pt2")
    return Digits(root / "digits.safetensors", root / "train.pt2", root / "eval.pt2", rows)
