"""tensorgrid.workloads.checked: an exported program's input checks, once per shape signature,
with the same verdicts as the checks torch runs on every call."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tensorgrid.workloads import checked
from tensorgrid.workloads.checked import CheckedProgram
from tensorgrid.workloads.model import export_program, load_program


class _Pair(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + y


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checked") / "pair.pt2"
    export_program(_Pair().eval(), (torch.randn(4, 4), torch.randn(4, 3)), path)
    return path


def _fresh(program: Path) -> tuple[torch.nn.Module, CheckedProgram]:
    plain = load_program(program, "cpu")
    return plain, CheckedProgram(load_program(program, "cpu"))


def test_same_answers_and_one_check_per_signature(program: Path) -> None:
    plain, fast = _fresh(program)
    with torch.no_grad():
        for rows in (1, 3, 1, 3, 1):
            x, y = torch.randn(rows, 4), torch.randn(rows, 3)
            assert torch.equal(fast(x, y), plain(x, y))
    assert fast.checks == 2  # rows 1 and rows 3


@pytest.mark.parametrize(
    "args",
    [
        (torch.randn(2, 5), torch.randn(2, 3)),  # a static dimension that differs
        (torch.randn(2, 4), torch.randn(3, 3)),  # two inputs that disagree on the dynamic batch dimension
        (torch.randn(2, 4, 1), torch.randn(2, 3)),  # one dimension too many
        (torch.randn(2, 4),),  # an argument missing
    ],
)
def test_a_refused_signature_is_refused_every_time(program: Path, args: tuple[torch.Tensor, ...]) -> None:
    plain, fast = _fresh(program)
    with pytest.raises(Exception) as expected:
        plain(*args)
    for _ in range(2):  # never remembered as passed
        with pytest.raises(type(expected.value)):
            fast(*args)
    assert fast.checks == 2
    with torch.no_grad():  # a signature that passes still runs afterwards
        fast(torch.randn(2, 4), torch.randn(2, 3))


def test_the_memory_of_signatures_is_bounded(program: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checked, "MAX_SIGNATURES", 2)
    _, fast = _fresh(program)
    with torch.no_grad():
        for rows in (1, 2, 3, 1):
            fast(torch.randn(rows, 4), torch.randn(rows, 3))
    assert fast.checks == 4  # rows 3 started the memory again: rows 1 was checked once more


def test_a_module_without_the_hook_is_called_as_it_is() -> None:
    module = torch.nn.Linear(4, 2)
    fast = CheckedProgram(module)
    x = torch.randn(3, 4)
    assert torch.equal(fast(x), module(x))
    assert fast.checks == 0 and not hasattr(module, "validate_inputs")
