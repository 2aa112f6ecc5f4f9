"""Symbolic shape expressions are bounded before sympy sees them.

Each hostile expression is checked in a child process with a time limit: a regression that
let one through to exact evaluation must fail this test, not hang the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tensorgrid.errors import UnsafeFileError
from tensorgrid.workloads.exprcheck import check_expr
from tensorgrid.workloads.inference import run_inference
from tensorgrid.workloads.model import export_program
from tensorgrid.workloads.tensorfile import load_tensors, save_tensors

BOMBS = [
    "10**10**10",
    "Integer(10)**Integer(10)**Integer(10)",
    "Pow(Integer(10), Pow(Integer(10), Integer(10)))",
    "PowByNatural(Integer(9), Integer(9999999999))",
    "LShift(Integer(1), Integer(10000000000))",
    "((((2**64)**64)**64)**64)**64",
    "Mul(" + ", ".join(["Symbol('s0')"] * 200) + ")",
    "Integer(" + "9" * 400 + ")",
    "s0**s1",
    "Abs(" * 150 + "s0" + ")" * 150,
    "-" * 3000 + "1",
    "Max(" * 100 + "s0" + ", 1)" * 100,
    "Float('1e99999999999')",
    "1e999",
    "Symbol('s0').__class__",
    "__import__('os').system('true')",
    "lambda: 0",
    "Symbol('x' * 10)",
    "Integer(7)[0]",
    "s0 if s1 else s2",
    "GreaterThan(Integer(10)**Integer(10)**Integer(10), Integer(0))",  # sympy's own name of Ge: bounded alike
    "LessThan(Symbol('u0', integer=True), PowByNatural(Integer(9), Integer(9999999999)))",
]
OK = [
    "Symbol('s23', positive=True, integer=True)",
    "Mul(Integer(480), Symbol('s23', positive=True, integer=True))",
    "Min(Integer(16), Mul(Integer(16), Symbol('s23', positive=True, integer=True)))",
    "FloorDiv(s0, 2) + PythonMod(s1, 3)",
    "Pow(s0, 2) * s1 - 1",
    "And(Eq(s0, s1), Ne(s2, 0))",
    "Rational(1, 2) * s0",
    "Float('0.5', 53) * s0",
    "s0*s1*s2*s3 >= 1",
    # a data-dependent size's range, as torch writes it (sympy's names of Ge and Le)
    "GreaterThan(Symbol('u0', integer=True), Integer(0))",
    "LessThan(Symbol('u0', integer=True), Mul(Integer(8), Symbol('s77', positive=True, integer=True)))",
    "And(StrictGreaterThan(s0, 1), StrictLessThan(s0, 9), Unequality(s1, 0), Equality(s2, 4))",
]


def _run_isolated(expressions: list[str], timeout_s: float = 60.0) -> list[str]:
    """check_expr each expression in a child; 'ok' or the refusal message per expression.

    The time limit starts once the child has imported torch (slow on a loaded machine), so
    it bounds the checks alone; a check that evaluated a bomb would run for hours.
    """
    code = textwrap.dedent(
        """
        import json, sys
        from tensorgrid.errors import UnsafeFileError
        from tensorgrid.workloads.exprcheck import check_expr
        print("ready", flush=True)
        out = []
        for expr in json.loads(sys.stdin.readline()):
            try:
                check_expr(expr, "m.json")
                out.append("ok")
            except UnsafeFileError as e:
                out.append(str(e))
        print(json.dumps(out), flush=True)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        out, err = child.communicate(json.dumps(expressions) + "\n", timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        pytest.fail(f"checking {len(expressions)} expressions took over {timeout_s}s: one was evaluated")
    assert child.returncode == 0, err
    result: list[str] = json.loads(out)
    return result


def test_expression_bombs_are_refused_quickly() -> None:
    verdicts = _run_isolated(BOMBS)
    let_through = [expr[:60] for expr, verdict in zip(BOMBS, verdicts, strict=True) if verdict == "ok"]
    assert not let_through
    for verdict in verdicts:
        assert "symbolic shape expression" in verdict


def test_what_torch_writes_is_accepted() -> None:
    for expr in OK:
        check_expr(expr, "m.json")


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("10**10**10", "exponents and shifts must be integer literals"),
        ("Mul(" + ", ".join(["s0"] * 100) + ")", "bits"),
        ("Integer(" + "9" * 30 + ")", "larger than 64 bits"),
        ("Abs(" * 70 + "s0" + ")" * 70, "nested deeper"),
        ("os.system('x')", "outside the allowed vocabulary"),
    ],
)
def test_refusals_say_why(expr: str, reason: str) -> None:
    with pytest.raises(UnsafeFileError, match=reason):
        check_expr(expr, "m.json")


class _Selects(torch.nn.Module):
    """Rows whose first feature passes a threshold, counted: a size only the data decides (torch
    records its range as GreaterThan/LessThan of an unbacked symbol); each output row its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        picked = torch.nonzero(x[:, 0] > 0.5)  # data-dependent number of rows
        return x[:, :4] * 2 + picked.new_zeros(picked.shape[0]).sum()  # adds 0: rows stay independent


def test_a_program_with_a_data_dependent_size_loads_and_runs(tmp_path: Path) -> None:
    """Refused before ("calls 'LessThan', which is outside the allowed vocabulary")."""
    model, inputs, out = tmp_path / "m.pt2", tmp_path / "x.safetensors", tmp_path / "y.safetensors"
    export_program(_Selects().eval(), (torch.rand(4, 8),), model)
    x = torch.rand(8, 8)
    save_tensors({"x": x}, inputs)
    run_inference(model, inputs, out, batch_size=4, device="cpu")
    torch.testing.assert_close(load_tensors(out)["output"], x[:, :4] * 2)
