"""`Wei`: a column type for exact uint256 amounts on SQLite and PostgreSQL.

PostgreSQL stores NUMERIC(78, 0), which holds every uint256 exactly and sums exactly.
SQLite's NUMERIC affinity turns big numbers into 8-byte floats, so there the value is its
decimal text: exact, but not summable in SQL — add amounts in Python or keep running totals.
Python always sees an int; a float, a bool or a value outside [0, 2**256) is refused.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Dialect, Numeric, String
from sqlalchemy.types import TypeDecorator, TypeEngine

UINT256_MAX = 2**256 - 1


class Wei(TypeDecorator[int]):
    """An exact non-negative integer amount of wei (uint256)."""

    impl = String(78)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(78, 0, asdecimal=True))
        return dialect.type_descriptor(String(78))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"a wei amount must be an int, got {type(value).__name__} {value!r}")
        if not 0 <= value <= UINT256_MAX:
            raise ValueError(f"a wei amount must be in [0, 2**256), got {value}")
        # Decimal(int) is exact at any size (the context precision only limits arithmetic).
        return Decimal(value) if dialect.name == "postgresql" else str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return int(value)  # Decimal or decimal text: exact
