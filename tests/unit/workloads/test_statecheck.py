"""Inference programs may not write to their own parameters, buffers or constants."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tensorgrid.errors import UnsafeFileError
from tensorgrid.workloads.model import check_program, export_program, load_program


class _Counter(nn.Module):
    """Answers the same row differently on every call: a spot-check could never agree."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return x * self.calls


class _ThroughView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, 4), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.weight.view(8)[0:1].mul_(2)  # a write through two views of a parameter
        return x[:, :4] * self.weight.sum()


class _ScratchInPlace(nn.Module):
    """In-place on its own input and on intermediates: fine, nothing outlives the call."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        h = self.lin(x)
        h.relu_()
        return h.masked_fill_(h > 5, 5.0)


def test_state_writes_are_refused_in_inference_only(tmp_path: Path) -> None:
    for module, what in ((_Counter(), "calls"), (_ThroughView(), "weight")):
        path = tmp_path / f"{what}.pt2"
        export_program(module, (torch.randn(4, 8),), path)
        with pytest.raises(UnsafeFileError, match=f"writes to its own state.*{what}"):
            check_program(path)
        check_program(path, purpose="training")


def test_in_place_on_inputs_and_intermediates_is_accepted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _ScratchInPlace().eval()
    path = tmp_path / "scratch.pt2"
    export_program(module, (torch.randn(4, 8),), path)
    check_program(path)
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_program(path)(x.clone()), module(x.clone()))
