"""Every mainstream architecture of tensorgrid/testing/architectures.py, exported as its authors
would, passes intake vetting as an inference program and loads back to the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tensorgrid.testing.architectures import ARCHITECTURES
from tensorgrid.workloads.model import check_program, load_program


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_is_vetted_and_loads(name: str, tmp_path: Path) -> None:
    arch = ARCHITECTURES[name]
    arch.export(tmp_path / "model.pt2")
    info = check_program(tmp_path / "model.pt2")
    assert all(op.startswith(("torch.ops.aten.", "_operator.", "torch.sym_")) for op in info.operators)
    inputs = arch.inputs(5, torch.Generator().manual_seed(3))  # not the traced batch size
    torch.manual_seed(0)
    with torch.no_grad():
        want = arch.build().eval()(*inputs.values())
        got = load_program(tmp_path / "model.pt2")(*inputs.values())
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
