"""Bounded checks of the symbolic shape expressions in a serialized torch.export graph.

torch's deserializer hands each `expr_str` to `sympy.sympify`, which evaluates it exactly:
"10**10**10" asks for a ten-billion-digit integer and never returns. So an expression is
parsed with Python's `ast` (no evaluation) and refused unless it is small and shallow, uses
only a fixed vocabulary, and provably stays small: every exponent and shift is an integer
literal, and an upper bound on the size in bits of every integer it can produce (sizes are
64-bit, products add bits, powers multiply them) stays under MAX_VALUE_BITS. Expressions
torch writes look like "Mul(Integer(480), Symbol('s23', positive=True, integer=True))".
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

from tensorgrid.errors import UnsafeFileError

__all__ = ["MAX_DEPTH", "MAX_EXPR_CHARS", "MAX_NODES", "MAX_VALUE_BITS", "check_expr"]

MAX_EXPR_CHARS = 4096
MAX_NODES = 2000  # ast nodes
MAX_DEPTH = 64
MAX_LITERAL_BITS = 64
MAX_EXPONENT = 64
MAX_VALUE_BITS = 4096
SYMBOL_BITS = 64  # a symbol stands for a size or an unbacked int: int64

# sympy's own names of the relations Eq, Ne, Lt, Le, Gt, Ge (the same classes: sympy.GreaterThan is
# sympy.Ge): torch writes a data-dependent size's range as "GreaterThan(Symbol('u0', ...), Integer(0))".
_RELATIONS = ("Equality", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan")
# Functions sympify may see: symbol constructors, torch's sympy functions, sympy relations.
_FUNCTIONS = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise",
    *_RELATIONS,
    "floor", "ceiling", "sqrt",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
})  # fmt: skip
_CONSTANTS = frozenset({"oo", "zoo", "nan", "True", "False"})
_ASSUMPTIONS = frozenset({
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero",
})  # fmt: skip
# Their value is at most their largest argument (plus carries): max bits, not the sum.
_ADDITIVE = frozenset({
    "Add", "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", *_RELATIONS, "And", "Or", "Not", "Piecewise",
    "Where",
    "floor", "ceiling", "sqrt", "CeilToInt", "FloorToInt", "TruncToFloat", "TruncToInt", "RoundToInt",
    "ToFloat", "Identity", "Integer", "Rational",
})  # fmt: skip
_POWERS = frozenset({"Pow", "PowByNatural", "FloatPow"})  # second argument is the exponent
_SHIFTS = frozenset({"LShift"})  # second argument is a shift count
_SYMBOL_RE = re.compile(r"[a-z]{1,4}[0-9]{1,9}")
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


class _Refused(Exception):
    """Why an expression is refused (turned into UnsafeFileError by check_expr)."""


def check_expr(expr: Any, where: str) -> None:
    """Refuse a symbolic shape expression sympy could not evaluate quickly and safely."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        raise UnsafeFileError(f"{where}: a symbolic shape expression is not a string of at most {MAX_EXPR_CHARS} chars")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise UnsafeFileError(f"{where}: malformed symbolic shape expression {expr[:120]!r}") from None
    try:
        _check_shape(tree)
        bits = _bits(tree.body)
    except _Refused as e:
        raise UnsafeFileError(f"{where}: symbolic shape expression {expr[:120]!r} is refused: {e}") from None
    if bits > MAX_VALUE_BITS:
        raise UnsafeFileError(
            f"{where}: symbolic shape expression {expr[:120]!r} is refused: its value could need up to {bits} "
            f"bits (limit {MAX_VALUE_BITS}); real tensor sizes never do"
        )


def _check_shape(tree: ast.Expression) -> None:
    """Count nodes and measure depth without recursion (a hostile tree may be deep)."""
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} terms")
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH}")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _bits(node: ast.AST) -> int:
    """An upper bound on the bits of any integer this node can evaluate to (depth already bounded)."""
    if isinstance(node, ast.Constant):
        return _literal_bits(node.value)
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return 1
        if _SYMBOL_RE.fullmatch(node.id):
            return SYMBOL_BITS
        raise _Refused(f"name {node.id[:40]!r} is outside the allowed vocabulary")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
        return _bits(node.operand)
    if isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
        if isinstance(node.op, ast.Pow):
            return _bits(node.left) * _exponent(node.right)
        left, right = _bits(node.left), _bits(node.right)
        return max(left, right) + 1 if isinstance(node.op, ast.Add | ast.Sub) else left + right
    if isinstance(node, ast.Compare) and all(isinstance(op, _CMPOPS) for op in node.ops):
        return max(_bits(n) for n in (node.left, *node.comparators))
    if isinstance(node, ast.BoolOp):
        return max(_bits(v) for v in node.values)
    if isinstance(node, ast.Call):
        return _call_bits(node)
    raise _Refused(f"{type(node).__name__} is outside the allowed vocabulary")


def _call_bits(node: ast.Call) -> int:
    func = node.func.id if isinstance(node.func, ast.Name) else None
    if func not in _FUNCTIONS:
        raise _Refused(f"calls {ast.unparse(node.func)[:40]!r}, which is outside the allowed vocabulary")
    for keyword in node.keywords:
        value = keyword.value
        if keyword.arg not in _ASSUMPTIONS or not (isinstance(value, ast.Constant) and isinstance(value.value, bool)):
            raise _Refused(f"{func}() takes only assumption flags such as integer=True")
    if func == "Symbol":
        if len(node.args) != 1 or not _is_symbol_name(node.args[0]):
            raise _Refused("Symbol() takes one short symbol name such as 's0'")
        return SYMBOL_BITS
    if func == "Float":
        return _float_bits(node.args)
    if func in _POWERS or func in _SHIFTS:
        if len(node.args) != 2:
            raise _Refused(f"{func}() takes two arguments")
        base, count = _bits(node.args[0]), _exponent(node.args[1])
        return base * count if func in _POWERS else base + count
    if any(isinstance(arg, ast.Starred) for arg in node.args):
        raise _Refused("starred arguments are outside the allowed vocabulary")
    sizes = [_bits(arg) for arg in node.args]
    if func in _ADDITIVE:
        return max(sizes, default=1) + len(sizes).bit_length()
    return sum(sizes) + 1  # products, divisions, remainders: at most the sum


def _literal_bits(value: Any) -> int:
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        if value.bit_length() > MAX_LITERAL_BITS:
            raise _Refused(f"an integer literal is larger than {MAX_LITERAL_BITS} bits")
        return max(1, value.bit_length())
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused("a float literal is not finite")
        return 1  # sympy Floats have fixed precision: they never grow
    raise _Refused(f"literal {str(value)[:40]!r} is outside the allowed vocabulary")


def _float_bits(args: list[ast.expr]) -> int:
    if not 1 <= len(args) <= 2 or not all(isinstance(a, ast.Constant) for a in args):
        raise _Refused("Float() takes a literal value (and precision)")
    value = args[0].value  # type: ignore[attr-defined]
    if isinstance(value, str):
        try:
            value = float(value) if len(value) <= 40 else math.inf
        except ValueError:
            raise _Refused("Float() needs a number") from None
    _literal_bits(value)
    if len(args) == 2:
        precision = args[1].value  # type: ignore[attr-defined]
        if not isinstance(precision, int) or isinstance(precision, bool) or not 1 <= precision <= 256:
            raise _Refused("a Float precision must be between 1 and 256")
    return 1


def _exponent(node: ast.AST) -> int:
    """An exponent or shift must be a small integer literal (possibly negative)."""
    inner = node.operand if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) else node
    if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "Integer":
        inner = inner.args[0] if len(inner.args) == 1 and not inner.keywords else inner
    if isinstance(inner, ast.UnaryOp) and isinstance(inner.op, ast.USub):
        inner = inner.operand
    value = inner.value if isinstance(inner, ast.Constant) else None
    if not isinstance(value, int) or isinstance(value, bool) or value > MAX_EXPONENT:
        raise _Refused(f"exponents and shifts must be integer literals of at most {MAX_EXPONENT}")
    return max(value, 1)


def _is_symbol_name(node: ast.AST) -> bool:
    value = node.value if isinstance(node, ast.Constant) else None
    return isinstance(value, str) and _SYMBOL_RE.fullmatch(value) is not None
