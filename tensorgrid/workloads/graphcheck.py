"""Static checks of a serialized torch.export graph (the archive's models/<name>.json).

torch's deserializer is not safe on hostile input even with every pickle removed:
  * symbolic shape strings (`expr_str`) go through `sympy.sympify`, which calls `eval` and
    evaluates exactly (exprcheck bounds them);
  * node targets resolve by `getattr` from the `torch`, `operator` and `math` modules, and
    any callable found becomes a graph call (e.g. "torch.os.system");
  * `guards_code` strings are `exec`-ed by `ExportedProgram.module()`.
So before torch sees a graph we allow aten operators minus a documented denylist (oppolicy,
which also depends on what the program is for), a short list of symbolic-int helpers,
bounded expressions of a fixed vocabulary, and guards that only compare input sizes
(e.g. "L['a'].size()[0] == L['b'].size()[0]"). An inference program may not write to its
own state (statecheck).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from typing import Any

from tensorgrid.errors import UnsafeFileError
from tensorgrid.workloads.exprcheck import MAX_EXPR_CHARS, check_expr
from tensorgrid.workloads.oppolicy import PURPOSES, Purpose, refusal
from tensorgrid.workloads.optable import schema, torch_version
from tensorgrid.workloads.statecheck import state_writes

__all__ = ["check_graph_json"]

# Non-aten callables torch emits for symbolic sizes: the only ones allowed outside aten.
_OPERATOR_OK = frozenset({
    "add", "sub", "mul", "floordiv", "truediv", "mod", "pow", "neg", "pos", "abs",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "getitem",
})  # fmt: skip
_TORCH_OK = frozenset({
    "sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_sqrt", "sym_ite", "sym_sum",
})  # fmt: skip
_MATH_OK = frozenset({"ceil", "floor", "trunc", "sqrt"})
_ATEN_RE = re.compile(r"torch\.ops\.aten\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")


def check_graph_json(model: Any, where: str, purpose: Purpose = "inference") -> tuple[str, ...]:
    """Refuse a serialized ExportedProgram that could run code on load or break the rules of
    its purpose ("inference" or "training"); return its operators."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown program purpose {purpose!r}; expected one of {PURPOSES}")
    if not isinstance(model, dict) or "graph_module" not in model:
        raise UnsafeFileError(f"{where} is not a serialized torch.export program")
    guards = model.get("guards_code") or []
    if not isinstance(guards, list):
        raise UnsafeFileError(f"{where}: guards_code must be a list")
    for guard in guards:
        _check_guard(guard, where)
    targets: set[str] = set()
    for key, value, parent in _walk(model):
        if key == "target":
            targets.add(_check_target(value, parent, where, purpose))
        elif key == "expr_str":
            check_expr(value, where)
    if purpose == "inference":
        _check_state(model["graph_module"], where)
    return tuple(sorted(targets))


def _walk(obj: Any) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    # Iterative so a deeply nested hostile document cannot exhaust the Python stack.
    stack: list[Any] = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                yield key, value, item
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _check_target(target: Any, node: dict[str, Any], where: str, purpose: Purpose) -> str:
    if not isinstance(target, str):
        raise UnsafeFileError(f"{where}: a graph node has a non-string target")
    module, _, name = target.partition(".")
    if (
        (module == "_operator" and name in _OPERATOR_OK)
        or (module == "math" and name in _MATH_OK)
        or (module == "torch" and name in _TORCH_OK)
    ):
        return target
    match = _ATEN_RE.fullmatch(target)
    if match is None:
        raise UnsafeFileError(
            f"{where}: operator {target[:200]!r} is not an aten operator; custom, backend, collective and "
            "higher-order operators and Python callables are refused (TensorGrid programs call torch.ops.aten.*)"
        )
    op_name, overload = match.groups()
    if schema(op_name, overload) is None:
        raise UnsafeFileError(f"{where}: {target[:200]!r} is not an operator of torch {torch_version()}")
    reason = refusal(op_name, overload, node.get("inputs"), purpose)
    if reason is not None:
        raise UnsafeFileError(f"{where}: {reason}")
    return target


def _check_state(graph_module: Any, where: str) -> None:
    written = state_writes(graph_module)
    if written:
        raise UnsafeFileError(
            f"{where}: the program writes to its own state {written[:5]} on every call; an inference program "
            "must give the same output for the same row every time (a node keeps programs loaded across "
            "tasks), so in-place updates of parameters, buffers or constants are refused"
        )


# Guards torch emits for batch dims compare sizes: L['a'].size()[0] == L['b'].size()[0].
_GUARD_NODES = (
    ast.Expression, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.Constant, ast.Subscript,
    ast.Name, ast.Call, ast.Attribute, ast.Load, ast.And, ast.Or, ast.Not, ast.USub,
    ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE,
)  # fmt: skip
_GUARD_METHODS = frozenset({"size", "stride", "dim", "storage_offset"})
_GUARD_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")


def _check_guard(code: Any, where: str) -> None:
    refusal = UnsafeFileError(
        f"{where}: shape guard {str(code)[:120]!r} is not a plain size comparison; torch executes "
        "guards as Python when loading, so only comparisons of input sizes are accepted"
    )
    if not isinstance(code, str) or len(code) > MAX_EXPR_CHARS:
        raise refusal
    try:
        tree = ast.parse(code, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise refusal from None
    for node in ast.walk(tree):
        if not isinstance(node, _GUARD_NODES) or not _guard_node_ok(node):
            raise refusal


def _guard_node_ok(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id == "L"
    if isinstance(node, ast.Constant):
        value = node.value
        return isinstance(value, bool | int) or (isinstance(value, str) and _GUARD_KEY_RE.fullmatch(value) is not None)
    if isinstance(node, ast.Attribute):
        return node.attr in _GUARD_METHODS
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Attribute) and not node.keywords and len(node.args) <= 1
    return True
