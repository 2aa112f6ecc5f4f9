"""Static checks of a serialized torch.export graph (the archive's models/<name>.json).

torch's deserializer is not safe on hostile input even with every pickle removed:
  * symbolic shape strings (`expr_str`) go through `sympy.sympify`, which calls `eval`;
  * node targets resolve by `getattr` from the `torch`, `operator` and `math` modules, and
    any callable found becomes a graph call (e.g. "torch.os.system");
  * `guards_code` strings are `exec`-ed by `ExportedProgram.module()`.
So before torch sees a graph we allow only aten operators (minus ones that touch files),
a short list of symbolic-int helpers, expressions made of a fixed vocabulary, and guards
that only compare input sizes (e.g. "L['a'].size()[0] == L['b'].size()[0]").
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from typing import Any

import torch

from tensorgrid.errors import UnsafeFileError

__all__ = ["check_graph_json"]

MAX_EXPR_CHARS = 4096

# Aten ops that read or map files on the node (torch.from_file can mmap any path).
_DENIED_ATEN = frozenset({"from_file", "_from_file"})
_OPERATOR_OK = frozenset({
    "add", "sub", "mul", "floordiv", "truediv", "mod", "pow", "neg", "pos", "abs",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "getitem",
})  # fmt: skip
_TORCH_OK = frozenset({
    "sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_sqrt", "sym_ite", "sym_sum",
})  # fmt: skip
_MATH_OK = frozenset({"ceil", "floor", "trunc", "sqrt"})
_ATEN_RE = re.compile(r"torch\.ops\.aten\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")

# Names sympify may see: symbol constructors, torch's sympy functions, sympy relations.
_EXPR_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise", "oo", "zoo", "nan",
    "True", "False", "floor", "ceiling", "sqrt",
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
})  # fmt: skip
_SYMBOL_RE = re.compile(r"[a-z]{1,4}[0-9]+")
_QUOTED_SYMBOL_RE = re.compile(r"""(['"])[a-z]{1,4}[0-9]+\1""")
_EXPR_OPS = frozenset({
    "+", "-", "*", "/", "//", "%", "**", "(", ")", ",", "=", "<", ">", "<=", ">=", "==", "!=",
})  # fmt: skip
_IGNORED_TOKENS = frozenset({tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER})


def check_graph_json(model: Any, where: str) -> tuple[str, ...]:
    """Refuse a serialized ExportedProgram that could run code on load; return its operators."""
    if not isinstance(model, dict) or "graph_module" not in model:
        raise UnsafeFileError(f"{where} is not a serialized torch.export program")
    guards = model.get("guards_code") or []
    if not isinstance(guards, list):
        raise UnsafeFileError(f"{where}: guards_code must be a list")
    for guard in guards:
        _check_guard(guard, where)
    targets: set[str] = set()
    for key, value in _walk(model):
        if key == "target":
            targets.add(_check_target(value, where))
        elif key == "expr_str":
            _check_expr(value, where)
    return tuple(sorted(targets))


def _walk(obj: Any) -> Iterator[tuple[str, Any]]:
    # Iterative so a deeply nested hostile document cannot exhaust the Python stack.
    stack: list[Any] = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                yield key, value
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _check_target(target: Any, where: str) -> str:
    if not isinstance(target, str):
        raise UnsafeFileError(f"{where}: a graph node has a non-string target")
    if _is_allowed_target(target):
        return target
    raise UnsafeFileError(
        f"{where}: operator {target[:200]!r} is not allowed; TensorGrid programs may only call "
        "core aten operators (no custom ops, higher-order ops or Python callables)"
    )


def _is_allowed_target(target: str) -> bool:
    module, _, name = target.partition(".")
    if module == "_operator":
        return name in _OPERATOR_OK
    if module == "math":
        return name in _MATH_OK
    if module == "torch" and name in _TORCH_OK:
        return True
    match = _ATEN_RE.fullmatch(target)
    if match is None:
        return False
    op_name, overload = match.groups()
    if op_name.startswith("__") or overload.startswith("_") or op_name in _DENIED_ATEN:
        return False
    try:
        op = getattr(getattr(torch.ops.aten, op_name), overload)
    except (AttributeError, RuntimeError):
        return False
    return isinstance(op, torch._ops.OpOverload)


def _check_expr(expr: Any, where: str) -> None:
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        raise UnsafeFileError(f"{where}: a symbolic shape expression is not a short string")
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        raise UnsafeFileError(f"{where}: malformed symbolic shape expression") from None
    for tok in tokens:
        if not _token_ok(tok):
            raise UnsafeFileError(
                f"{where}: symbolic shape expression {expr[:120]!r} contains {tok.string[:40]!r}, "
                "which is outside the allowed vocabulary"
            )


def _token_ok(tok: tokenize.TokenInfo) -> bool:
    if tok.type in _IGNORED_TOKENS:
        return True
    if tok.type == tokenize.NUMBER:
        return True
    if tok.type == tokenize.NAME:
        return tok.string in _EXPR_NAMES or _SYMBOL_RE.fullmatch(tok.string) is not None
    if tok.type == tokenize.STRING:
        return _QUOTED_SYMBOL_RE.fullmatch(tok.string) is not None
    if tok.type == tokenize.OP:
        return tok.string in _EXPR_OPS
    return False


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
